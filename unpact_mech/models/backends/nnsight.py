"""nnsight 0.8 backend: a ``TransformersModel`` envoy tree over the HookedLM's own HF module.

nnsight runs the intervention code interleaved with the forward, so hook sites must be visited in execution
order (see :attr:`~unpact_mech.models.hooks.HookSite.order`). Native locations per hook kind:

* ``hook_resid_pre``  -> ``layers[L].input``            * ``hook_resid_post`` -> ``layers[L].output``
* ``hook_attn_out``   -> ``layers[L].attn.output[0]``   * ``hook_mlp_out``    -> ``layers[L].mlp.output``
* ``attn.hook_v``     -> output of the value projection (GPT-2: last third of ``c_attn``), as (B, T, H_kv, d_head)
* ``attn.hook_z``     -> input of the attention output projection, viewed as (B, T, H, d_head)
* ``attn.hook_pattern`` -> the dropout op inside the eager attention function (identity in eval; its output
  feeds ``attn @ V``), reached with nnsight's ``.source`` drilling.
The model must run eager attention (set at load) so the pattern exists as a tensor.

The trace's model call goes through :attr:`Backend.module` (``_call`` is routed there), so inside
:meth:`Backend.calling` a distributed wrapper of the HF module runs the forward while nnsight's hooks fire as usual.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch

from unpact_mech.models.arch import walk
from unpact_mech.models.backends.base import ActFn, Backend
from unpact_mech.models.hooks import HookSite, parse_hook


@functools.cache
def _routed_model_class():
    """``TransformersModel`` whose model call goes through the owning backend's :attr:`Backend.module`."""
    from nnsight.modeling.transformers import TransformersModel

    class RoutedTransformersModel(TransformersModel):
        def _call(self, *inputs: Any, **kwargs: Any) -> Any:
            backend = self.__dict__.get("_unpact_backend")
            if backend is None or backend.module is backend.hf:
                return super()._call(*inputs, **kwargs)
            return backend.module(*inputs, **kwargs)

    return RoutedTransformersModel


class NNsightBackend(Backend):
    name = "nnsight"

    def __init__(self, hf, tokenizer, source_dir, arch, shape) -> None:
        super().__init__(hf, tokenizer, source_dir, arch, shape)
        self.lm = _routed_model_class()(hf, task="text-generation", tokenizer=tokenizer)
        object.__setattr__(self.lm, "_unpact_backend", self)  # plain attribute, bypassing the Envoy's __setattr__
        # Source-instrument every attention module now: instrumenting it inside a trace, after its forward has
        # started (e.g. when hook_v was read first), is too late. Outside a trace the instrumentation is inert.
        for layer in range(shape.n_layers):
            getattr(walk(self._block(layer), arch.attn).source, arch.pattern_source[0])

    @property
    def native(self) -> Any:
        return self.lm

    # -- one location per hook kind ----------------------------------------------------------------------------
    def _block(self, layer: int):
        return walk(self.lm, self.arch.layers)[layer]

    def _apply(self, site: HookSite, fn: ActFn) -> None:
        block = self._block(site.layer)
        attn = walk(block, self.arch.attn)
        if site.kind == "hook_resid_pre":
            act = block.input
            new = fn(act)
            if new is not act:
                block.input = new
        elif site.kind == "attn.hook_v":
            proj = walk(attn, self.arch.v_proj)
            out = proj.output
            if self.arch.v_chunk is None:
                new = fn(out.unflatten(-1, (self.shape.n_kv_heads, self.shape.d_head)))
                proj.output = new.reshape(out.shape)
            else:
                parts = list(out.chunk(3, dim=-1))
                v = parts[self.arch.v_chunk]
                parts[self.arch.v_chunk] = fn(v.unflatten(-1, (self.shape.n_kv_heads, self.shape.d_head))).reshape(
                    v.shape
                )
                proj.output = torch.cat(parts, dim=-1)
        elif site.kind == "attn.hook_pattern":
            first, *inner = self.arch.pattern_source
            env = getattr(attn.source, first)
            for op in inner:  # drill into the called attention function
                env = getattr(env.source, op)
            act = env.output
            new = fn(act)
            if new is not act:
                env.output = new
        elif site.kind == "attn.hook_z":
            proj = walk(attn, self.arch.attn_out_proj)
            act = proj.input
            new = fn(self.z_to_heads(act))
            proj.input = new.reshape(act.shape)
        elif site.kind == "hook_attn_out":
            out = attn.output
            act = out[0]
            new = fn(act)
            if new is not act:
                attn.output = (new, *out[1:])
        elif site.kind in ("hook_mlp_out", "hook_resid_post"):
            env = walk(block, self.arch.mlp) if site.kind == "hook_mlp_out" else block
            out = env.output
            act = out[0] if isinstance(out, tuple) else out
            new = fn(act)
            if new is not act:
                env.output = (new, *out[1:]) if isinstance(out, tuple) else new
        else:  # pragma: no cover - HookedLM only sends native kinds
            raise KeyError(site.name)

    def run(self, model_inputs: Mapping[str, Any], hooks: Mapping[str, ActFn]) -> Any:
        sites = sorted((parse_hook(n, self.shape.n_layers) for n in hooks), key=lambda s: s.order)
        with self.lm.trace(dict(model_inputs)):
            for site in sites:
                self._apply(site, hooks[site.name])
            out = self.lm.output.save()
        return out
