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
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any

from torch import Tensor

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

        with contextlib.redirect_stdout(io.StringIO()):  # the bridge prints set-up chatter
            self.bridge = TransformerBridge.boot_transformers(
                str(source_dir), hf_model=hf, tokenizer=tokenizer, device=str(hf.device)
            )

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
