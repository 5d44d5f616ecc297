"""nnsight 0.8 backend: a ``TransformersModel`` envoy tree over the HookedLM's own HF module.

nnsight runs the intervention code interleaved with the forward, so hook sites must be visited in execution
order (see :attr:`~unpact_mech.models.hooks.HookSite.order`); sites that live in one tensor (a fused q/k/v
projection, the rotated ``(q, k)``) are edited in one visit. Native locations per hook kind:

* ``hook_resid_pre``  -> ``layers[L].input``            * ``hook_resid_post`` -> ``layers[L].output``
* ``hook_attn_out``   -> ``layers[L].attn.output[0]``   * ``hook_mlp_out``    -> ``layers[L].mlp.output``
* ``attn.hook_v``     -> output of the value projection, as (B, T, H_kv, d_head); of a fused projection its v part
  (GPT-2's ``c_attn`` and Phi-3's ``qkv_proj``: [q | k | v]; GPT-NeoX's ``query_key_value``: per head [q_h | k_h | v_h])
* ``attn.hook_q`` / ``attn.hook_k`` -> rotary families: the output of the ``apply_rotary_pos_emb`` call inside the
  attention forward (nnsight ``.source``), transposed to (B, T, heads, d_head); GPT-2: the q / k part of ``c_attn``
* ``attn.hook_attn_scores`` -> the input of the softmax op inside the eager attention function (scaled scores plus
  the additive mask)
* ``attn.hook_pattern`` -> the dropout op inside the eager attention function (identity in eval; its output
  feeds ``attn @ V``), reached with nnsight's ``.source`` drilling.
* ``attn.hook_z``     -> input of the attention output projection, viewed as (B, T, H, d_head)
* ``mlp.hook_pre``    -> output of the MLP's first projection (Llama: ``gate_proj``; GPT-2: ``c_fc``; Phi-3: the
  gate half of ``gate_up_proj``)
* ``mlp.hook_post``   -> input of the MLP's output projection (Llama: ``down_proj``; GPT-2: ``c_proj``)
* ``ln_final.hook_normalized`` -> output of the final norm module
The model must run eager attention (set at load) so the scores and the pattern exist as tensors.

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

#: q / k / v: the Architecture fields naming their projection module and their third of a fused projection.
_PROJECTIONS = {
    "attn.hook_v": ("v_proj", "v_chunk"),
    "attn.hook_q": ("q_proj", "q_chunk"),
    "attn.hook_k": ("k_proj", "k_chunk"),
}


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

    def _location(self, site: HookSite) -> tuple:
        """Where a site's tensor lives; sites sharing a location are edited in one visit."""
        arch = self.arch
        if site.kind in ("attn.hook_q", "attn.hook_k") and arch.rotary_source is not None:
            return (site.layer, "rotary")
        if site.kind in _PROJECTIONS:
            return (site.layer, "proj", getattr(arch, _PROJECTIONS[site.kind][0]))
        return (site.layer, site.kind)

    def _chunk(self, kind: str) -> int | None:
        return getattr(self.arch, _PROJECTIONS[kind][1])

    def _heads(self, kind: str) -> int:
        return self.shape.n_heads if kind in ("attn.hook_q", "attn.hook_z") else self.shape.n_kv_heads

    @staticmethod
    def _drill(env, path: tuple[str, ...]):
        """Follow an nnsight ``.source`` path (an op, then ops inside the function it calls)."""
        first, *inner = path
        env = getattr(env.source, first)
        for op in inner:
            env = getattr(env.source, op)
        return env

    def _visit_projection(self, attn, proj_name: str, group: list[tuple[HookSite, ActFn]]) -> None:
        """q / k / v at the output of their projection, or their part of a fused one: [q | k | v] (GPT-2's
        ``c_attn``, Phi-3's ``qkv_proj``) or per head [q_h | k_h | v_h] (GPT-NeoX's ``query_key_value``)."""
        proj = walk(attn, proj_name)
        out = proj.output
        chunks = [self._chunk(site.kind) for site, _ in group]
        if chunks == [None]:
            site, fn = group[0]
            proj.output = fn(out.unflatten(-1, (self._heads(site.kind), self.shape.d_head))).reshape(out.shape)
            return
        if None in chunks:  # pragma: no cover - an Architecture entry mixing fused and separate projections
            raise ValueError(f"{self.arch.family}: projection {proj_name!r} is both fused and not")
        s = self.shape
        if self.arch.qkv_per_head:  # (..., H, 3 * d_head): each part already (..., H, d_head)
            parts = list(out.unflatten(-1, (s.n_heads, 3 * s.d_head)).chunk(3, dim=-1))
        else:
            widths = [s.n_heads * s.d_head, s.n_kv_heads * s.d_head, s.n_kv_heads * s.d_head]
            parts = [part.unflatten(-1, (w // s.d_head, s.d_head)) for part, w in zip(out.split(widths, -1), widths)]
        for (_, fn), c in zip(group, chunks):
            parts[c] = fn(parts[c])
        if self.arch.qkv_per_head:
            proj.output = torch.cat(parts, dim=-1).flatten(-2)
        else:
            proj.output = torch.cat([part.flatten(-2) for part in parts], dim=-1)

    def _visit_rotary(self, attn, group: list[tuple[HookSite, ActFn]]) -> None:
        """q and k after the rotary embedding: the ``(q, k)`` output of the call, each (B, heads, T, d_head)."""
        op = getattr(attn.source, self.arch.rotary_source)
        q, k = op.output
        fns = {site.kind: fn for site, fn in group}
        # Always write back: the hook function saw a transposed view, so the forward must continue from its result
        # (a cached activation is then a node of the graph, and gradients reach it).
        if "attn.hook_q" in fns:
            q = fns["attn.hook_q"](q.transpose(1, 2)).transpose(1, 2)
        if "attn.hook_k" in fns:
            k = fns["attn.hook_k"](k.transpose(1, 2)).transpose(1, 2)
        op.output = (q, k)

    def _visit(self, layer: int | None, group: list[tuple[HookSite, ActFn]]) -> None:
        site, fn = group[0]
        if layer is None:  # ln_final.hook_normalized (hook_embed is handled by HookedLM)
            env = walk(self.lm, self.arch.final_norm)
            out = env.output
            new = fn(out)
            if new is not out:
                env.output = new
            return
        block = self._block(layer)
        attn = walk(block, self.arch.attn)
        location = self._location(site)
        if location[1] == "rotary":
            self._visit_rotary(attn, group)
        elif location[1] == "proj":
            self._visit_projection(attn, location[2], group)
        elif site.kind == "hook_resid_pre":
            act = block.input
            new = fn(act)
            if new is not act:
                block.input = new
        elif site.kind == "attn.hook_attn_scores":  # the softmax's input
            env = self._drill(attn, self.arch.scores_source)
            act = env.input
            new = fn(act)
            if new is not act:
                env.input = new
        elif site.kind == "attn.hook_pattern":  # the (eval-identity) dropout's output, which feeds attn @ V
            env = self._drill(attn, self.arch.pattern_source)
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
        elif site.kind == "mlp.hook_pre" and self.arch.mlp_in_chunk is not None:  # a half of a fused [gate | up]
            env = walk(walk(block, self.arch.mlp), self.arch.mlp_in)
            halves = list(env.output.chunk(2, dim=-1))
            halves[self.arch.mlp_in_chunk] = fn(halves[self.arch.mlp_in_chunk])
            env.output = torch.cat(halves, dim=-1)
        elif site.kind in ("mlp.hook_pre", "mlp.hook_post"):  # the first projection's output / the last one's input
            pre = site.kind == "mlp.hook_pre"
            env = walk(walk(block, self.arch.mlp), self.arch.mlp_in if pre else self.arch.mlp_out_proj)
            side = "output" if pre else "input"
            act = getattr(env, side)
            new = fn(act)
            if new is not act:
                setattr(env, side, new)
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
        visits: list[tuple[tuple, list[tuple[HookSite, ActFn]]]] = []
        for site in sites:
            location = self._location(site)
            if visits and visits[-1][0] == location:
                visits[-1][1].append((site, hooks[site.name]))
            else:
                visits.append((location, [(site, hooks[site.name])]))
        with self.lm.trace(dict(model_inputs)):
            for location, group in visits:
                self._visit(location[0], group)
            out = self.lm.output.save()
        return out
