"""TransformerLens 4.x backend: a ``TransformerBridge`` booted around the HookedLM's own HF module.

``TransformerBridge.boot_transformers(dir, hf_model=hf)`` wraps the HF submodules in place (the parameters stay
the same objects), so calling ``hf(...)`` directly runs through the bridge's hook points: we attach hook
functions with ``bridge.hooks(fwd_hooks=...)`` and call the HF forward, which keeps HF's handling of
attention masks, position ids, ``logits_to_keep`` and the KV cache. The bridge computes attention eagerly
(its logits equal HF's eager attention exactly).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from unpact_mech.models.backends.base import ActFn, Backend


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

    def _wrap(self, name: str, fn: ActFn):
        if name.endswith("attn.hook_z"):

            def hook(act: Tensor, hook=None) -> Tensor:
                return fn(self.z_to_heads(act)).reshape(act.shape)

        else:

            def hook(act: Tensor, hook=None) -> Tensor:
                return fn(act)

        return hook

    def run(self, model_inputs: Mapping[str, Any], hooks: Mapping[str, ActFn]) -> Any:
        fwd = [(name, self._wrap(name, fn)) for name, fn in hooks.items()]
        with self.bridge.hooks(fwd_hooks=fwd):
            return self.module(**model_inputs)
