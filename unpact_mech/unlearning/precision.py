"""Float32 master weights for unlearning a model loaded in a half precision (``--dtype bfloat16|float16``).

AdamW on bfloat16 parameters keeps its moments in bfloat16 and adds each update to a bfloat16 weight, whose 8-bit
mantissa rounds away any relative change below ~0.4%: at the learning rates unlearning uses (1e-5 on weights of
~1e-2) most updates vanish. So, as mixed-precision training does, the optimizer runs on float32 copies:

1. forward and backward in the model's dtype (the gradients arrive in it);
2. ``m.grad = p.grad.float()`` for every trainable ``p`` and its master ``m`` (:meth:`MasterWeights.grads_to_masters`);
3. clipping and AdamW on the masters (float32 moments ``exp_avg``, ``exp_avg_sq``);
4. ``p <- m`` rounded to the model's dtype (:meth:`MasterWeights.masters_to_params`).

A float32 model needs none of this (:meth:`MasterWeights.needed` is False) and trains exactly as before. A resumed
half-precision run restarts its masters from the checkpoint's half-precision weights (the optimizer state itself is
restored in float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class MasterWeights:
    """Float32 copies of ``params`` for the optimizer (see the module docstring)."""

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = list(params)
        self.masters: list[Tensor] = [p.detach().float().clone() for p in self.params]

    @staticmethod
    def needed(params: Sequence[torch.nn.Parameter]) -> bool:
        """Whether any trainable parameter is not float32."""
        return any(p.dtype != torch.float32 for p in params)

    @torch.no_grad()
    def refresh(self) -> None:
        """Masters <- the parameters (after weights were loaded into the model, e.g. on resume)."""
        for p, m in zip(self.params, self.masters):
            m.copy_(p)

    def grads_to_masters(self) -> None:
        """``m.grad = float32(p.grad)``; the parameters' own gradients are released."""
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.detach().float()
            p.grad = None

    @torch.no_grad()
    def masters_to_params(self) -> None:
        """``p <- m`` in the parameters' dtype (in place: hooks and backends keep seeing the same tensors)."""
        for p, m in zip(self.params, self.masters):
            p.copy_(m)
