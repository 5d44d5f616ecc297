"""Grid snapping: make an unlearning update survive re-quantization onto the model's source grid.

The embedded SmolLM2 is a dequantised GGUF file, so its weights lie on their blocks' grids (Q4_1: ``m + d·q``,
q in 0..15; Q8_0: ``d·q``, q in -127..127; ``d`` per block of 32 along the last axis). Training moves a weight by
``Δ = W_t - W_b``; while ``|Δ| < d / 2`` re-quantization rounds it back to ``W_b`` — which is why re-quantizing any
unlearned model here returns the base model and every forgotten answer (the battery's ``quantize[source]``).

Snapping keeps the unlearning signal on the grid: per tensor, the fraction ``ρ`` of the elements with the largest
``|Δ| / d`` go to the next grid point in the direction of their update, ``W_out = W_b + sign(Δ)·d``. The elements
that set their block's scale (its minimum, maximum or largest ``|w|``) are never snapped and are held at their base
value, so the block keeps its scale and each snapped element re-quantizes to itself; every other element keeps its
trained value ``W_t`` (within half a step of the base, it re-quantizes to the base). A snapped weight moves by a whole
step ``d`` (about 0.05 on SmolLM2's Q4_1 blocks) where training moved it by a fraction of one: ``ρ`` trades the part
of the update that survives re-quantization against the extra change to the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: GGUF block length along the last axis (Q4_1, Q8_0).
BLOCK = 32


def scale_setting(base: Tensor, block: int = BLOCK) -> Tensor:
    """Bool mask, shape of ``base`` (..., K with K a multiple of ``block``): the elements equal to their block's
    minimum, maximum or largest absolute value (moving them would change the block's scale)."""
    g = base.reshape(-1, block)
    mask = (g == g.amax(1, keepdim=True)) | (g == g.amin(1, keepdim=True)) | (g.abs() == g.abs().amax(1, keepdim=True))
    return mask.reshape(base.shape)


def snap_to_grid(base: Tensor, trained: Tensor, step: Tensor, fraction: float, block: int = BLOCK) -> Tensor:
    """``W_out`` (module docstring): ``trained`` with the ``floor(fraction · numel)`` eligible elements of largest
    ``|trained - base| / step`` set to ``base + sign(trained - base) · step`` (ties: the first in memory order) and,
    when ``fraction > 0``, the scale-setting elements (:func:`scale_setting`) set back to ``base``.

    ``base``, ``trained``, ``step`` (the grid step of each base element, e.g.
    :func:`~unpact_mech.attacks.quantize.bin_width`): same shape (..., K), K a multiple of ``block``; the result has
    ``trained``'s dtype. Eligible: moved by training and not setting its block's scale. ``fraction`` in [0, 1]; 0
    returns ``trained``'s values unchanged (a new tensor)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not (base.shape == trained.shape == step.shape):
        raise ValueError(
            f"shapes differ: base {tuple(base.shape)}, trained {tuple(trained.shape)}, step {tuple(step.shape)}"
        )
    delta = (trained.double() - base.double()).flatten()
    fixed = scale_setting(base, block).flatten()
    eligible = (delta != 0) & ~fixed & (step.flatten() > 0)
    score = torch.where(eligible, delta.abs() / step.double().flatten().clamp_min(1e-30), -1.0)  # on any device
    k = min(int(fraction * base.numel()), int(eligible.sum()))
    out = trained.detach().clone().flatten()
    if fraction > 0:
        out[fixed] = base.flatten()[fixed].to(out.dtype)
    if k:
        chosen = torch.argsort(score, descending=True, stable=True)[:k]
        target = base.double().flatten()[chosen] + torch.sign(delta[chosen]) * step.double().flatten()[chosen]
        out[chosen] = target.to(out.dtype)
    return out.reshape(trained.shape)


def snap_matrices(
    base: dict[str, Tensor], trained: dict[str, Tensor], plan: dict[str, str], fraction: float, group_size: int = BLOCK
) -> dict[str, Tensor]:
    """:func:`snap_to_grid` on every tensor of ``plan`` (name -> quantization kind, e.g. ``"q4_1"`` or ``"int4"``;
    :func:`~unpact_mech.attacks.quantize.scheme_plan`) present in ``trained``, each with the grid step of its BASE
    weights (:func:`~unpact_mech.attacks.quantize.bin_width` with ``group_size``, used by the RTN kinds). Returns a
    new dict: ``trained``'s entries, the planned ones snapped (same shapes and dtypes)."""
    from unpact_mech.attacks.quantize import bin_width

    out = dict(trained)
    for name, kind in plan.items():
        if name in trained:
            step = bin_width(base[name], kind, group_size).to(trained[name].dtype)
            out[name] = snap_to_grid(base[name], trained[name], step, fraction)
    return out
