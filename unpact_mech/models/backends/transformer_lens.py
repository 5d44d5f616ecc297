"""TransformerLens 4.x backend: a ``TransformerBridge`` booted around the HookedLM's own HF module.

``TransformerBridge.boot_transformers(dir, hf_model=hf)`` wraps the HF submodules in place (the parameters stay
the same objects), so calling ``hf(...)`` directly runs through the bridge's hook points: we attach hook
functions with ``bridge.hooks(fwd_hooks=...)`` and call the HF forward, which keeps HF's handling of
attention masks, position ids, ``logits_to_keep`` and the KV cache. The bridge computes attention eagerly
(its logits equal HF's eager attention exactly).

Our names are the bridge's, except: ``attn.hook_q`` / ``attn.hook_k`` are the bridge's ``hook_rot_q`` /
``hook_rot_k`` on rotary families (our q and k are taken after the rotary embedding), and
``ln_final.hook_normalized`` is the bridge's ``ln_final.hook_out`` (the norm's output with its weight applied; the
bridge's own ``hook_normalized`` is taken before the weight on RMS norms).

Fused projections (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``, GPT-NeoX's ``query_key_value``):
the bridge splits them at boot into separate q/k/v (gate/up) linears whose weights are new parameters — copies
(GPT-NeoX) or views (GPT-2, Phi-3) of the fused one, in any case leaves of their own, so gradients never reached the
HF parameter that unlearning trains and GPT-NeoX never saw a weight update. Each split linear is replaced here by a
:class:`FusedPart` that slices the HF parameter at every call (same numbers; gradients and updates reach ``hf``).
The bridge's fused-QKV-with-rotary attention (Phi-3, GPT-NeoX) rotates q and k without firing ``hook_rot_q`` /
``hook_rot_k``; its rotation is wrapped so that they fire, as in the other rotary bridges.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from unpact_mech.models.arch import Architecture, ModelShape, walk
from unpact_mech.models.backends.base import ActFn, Backend
from unpact_mech.models.hooks import parse_hook

#: Activations the bridge may hand over flat, (B, T, heads * d_head), with the head count they split into.
_HEAD_KINDS = {
    "attn.hook_q": "n_heads",
    "attn.hook_z": "n_heads",
    "attn.hook_k": "n_kv_heads",
    "attn.hook_v": "n_kv_heads",
}


class TransformerLensBackend(Backend):
    name = "transformer_lens"

    def __init__(self, hf, tokenizer, source_dir, arch, shape) -> None:
        super().__init__(hf, tokenizer, source_dir, arch, shape)
        from transformer_lens import TransformerBridge

        fused = fused_parts(hf, arch, shape)  # read before the bridge wraps the modules
        with contextlib.redirect_stdout(io.StringIO()):  # the bridge prints set-up chatter
            self.bridge = TransformerBridge.boot_transformers(
                str(source_dir), hf_model=hf, tokenizer=tokenizer, device=str(hf.device)
            )
        for layer in range(shape.n_layers):
            block = self.bridge.blocks[layer]
            for (component, name), part in fused.get(layer, {}).items():
                linear = getattr(getattr(block, component), name, None)
                if linear is None:  # pragma: no cover - a bridge that does not split this projection
                    raise RuntimeError(f"{arch.family}: the bridge has no blocks.{layer}.{component}.{name}")
                linear.set_original_component(part)
            if arch.rotary and arch.q_chunk is not None:
                _fire_rotary_hooks(block.attn)

    @property
    def native(self) -> Any:
        return self.bridge

    def native_name(self, name: str) -> str:
        """The bridge's hook point for one of our hook names."""
        site = parse_hook(name, self.shape.n_layers)
        if site.kind == "ln_final.hook_normalized":
            return "ln_final.hook_out"
        if self.arch.rotary and site.kind in ("attn.hook_q", "attn.hook_k"):
            return f"blocks.{site.layer}.attn.hook_rot_{site.kind[-1]}"
        return name

    def _wrap(self, name: str, fn: ActFn):
        kind = parse_hook(name, self.shape.n_layers).kind
        if kind in _HEAD_KINDS:
            heads = getattr(self.shape, _HEAD_KINDS[kind])

            def hook(act: Tensor, hook=None) -> Tensor:
                if act.dim() == 4:
                    return fn(act)
                return fn(act.unflatten(-1, (heads, self.shape.d_head))).reshape(act.shape)

        else:

            def hook(act: Tensor, hook=None) -> Tensor:
                return fn(act)

        return hook

    def run(self, model_inputs: Mapping[str, Any], hooks: Mapping[str, ActFn]) -> Any:
        fwd = [(self.native_name(name), self._wrap(name, fn)) for name, fn in hooks.items()]
        with self.bridge.hooks(fwd_hooks=fwd):
            return self.module(**model_inputs)


class FusedPart(torch.nn.Module):
    """One part of a fused HF projection as a linear map: ``x @ select(W).T + select(b)``, sliced from the HF
    parameters at every call (not registered here: they stay the HF module's own)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, select: Callable[[Tensor], Tensor], conv1d: bool) -> None:
        super().__init__()
        self._source = (weight, bias)
        self._select, self._conv1d = select, conv1d
        self.out_features, self.in_features = self.weight.shape

    @property
    def weight(self) -> Tensor:
        """(out, in), nn.Linear layout."""
        w = self._source[0]
        return self._select(w.T if self._conv1d else w)

    @property
    def bias(self) -> Tensor | None:
        b = self._source[1]
        return None if b is None else self._select(b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def fused_parts(hf, arch: Architecture, shape: ModelShape) -> dict[int, dict[tuple[str, str], FusedPart]]:
    """Per layer, the bridge's split linears (``(component, name)``, e.g. ``("attn", "q")``) of the family's fused
    projections, as :class:`FusedPart` s of the HF parameters, in the layout the nnsight backend reads them."""
    out: dict[int, dict[tuple[str, str], FusedPart]] = {}
    H, H_kv, dh = shape.n_heads, shape.n_kv_heads, shape.d_head

    def qkv_part(chunk: int) -> Callable[[Tensor], Tensor]:
        if arch.qkv_per_head:  # rows h * 3 * d_head + [q | k | v]
            return lambda t: t.unflatten(0, (H, 3, dh))[:, chunk].flatten(0, 1)
        widths = [H * dh, H_kv * dh, H_kv * dh]
        return lambda t: t.split(widths, 0)[chunk]

    for layer in range(shape.n_layers):
        block = walk(hf, arch.layers)[layer]
        parts: dict[tuple[str, str], FusedPart] = {}
        if arch.q_chunk is not None:
            proj = walk(walk(block, arch.attn), arch.q_proj)
            for name, chunk in (("q", arch.q_chunk), ("k", arch.k_chunk), ("v", arch.v_chunk)):
                parts["attn", name] = FusedPart(proj.weight, proj.bias, qkv_part(chunk), arch.o_is_conv1d)
        if arch.mlp_in_chunk is not None:
            proj = walk(walk(block, arch.mlp), arch.mlp_in)
            for name, chunk in (("gate", arch.mlp_in_chunk), ("in", 1 - arch.mlp_in_chunk)):
                parts["mlp", name] = FusedPart(
                    proj.weight, proj.bias, lambda t, c=chunk: t.chunk(2, 0)[c], arch.o_is_conv1d
                )
        if parts:
            out[layer] = parts
    return out


def _fire_rotary_hooks(attn) -> None:
    """Make a fused-QKV rotary attention bridge fire ``hook_rot_q`` / ``hook_rot_k`` on the rotated q and k, each
    (B, heads, T, d_head) (the hook points transpose them to (B, T, heads, d_head) for the hook functions)."""
    rotate = attn._apply_rotary_pos_emb

    def rotate_and_hook(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        q, k = rotate(q, k, cos, sin)
        return attn.hook_rot_q(q), attn.hook_rot_k(k)

    attn._apply_rotary_pos_emb = rotate_and_hook
