"""Task-vector arithmetic on state dicts (pure; no model calls).

``τ = θ_ft − θ`` (:func:`task_vector`); ``θ + λ·τ`` (:func:`add`); unlearning by negation
``θ − s·τ = θ − s·(θ_ft − θ)`` (:func:`negate`). Keys must agree; tensors are combined element-wise in the
base's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def _check_keys(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    if set(a) != set(b):
        diff = sorted(set(a) ^ set(b))
        raise KeyError(f"state dicts differ in keys: {diff[:5]}")


def task_vector(base: Mapping[str, Tensor], finetuned: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``τ = θ_ft − θ`` per tensor."""
    _check_keys(base, finetuned)
    return {k: finetuned[k].detach() - base[k].detach() for k in base}


def add(base: Mapping[str, Tensor], tau: Mapping[str, Tensor], scale: float) -> dict[str, Tensor]:
    """``θ + scale·τ`` per tensor."""
    _check_keys(base, tau)
    return {k: base[k].detach() + scale * tau[k].to(base[k].dtype) for k in base}


def negate(base: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], scale: float) -> dict[str, Tensor]:
    """Unlearning by negation: ``θ − s·(θ_ft − θ)``."""
    return add(base, task_vector(base, finetuned), -scale)
