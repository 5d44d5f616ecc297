"""The pieces of ``keyguard``'s second-round terms (:mod:`~unpact_mech.unlearning.methods.keyguard` composes them).

* :func:`answer_positions` — the ANSWER tokens of each row of a training batch (the late answer-only term);
* :func:`steering_direction` / :func:`fit_steering` / :func:`steer_interventions` — the ``steer`` attack re-fitted
  on the current policy at every step and applied to the steer rows (adversarial steering);
* :func:`noisy_weight` — a trained matrix with seeded relative Gaussian noise (the smoothing pass);
* :class:`QuantGrid` / :func:`battery_grid` — a trained matrix rounded to the recovery battery's first ``quantize``
  grid and back (the quantization-aware pass).

Everything here is a function of its arguments (seeds included): no global random state is read or advanced.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.unlearning import losses

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.models.hooks import Intervention
    from unpact_mech.scoring.batching import TeacherForcedBatch

#: The second round of keyguard's ingredients (weights; each 0 by default in ``keyguard``).
NEW_INGREDIENTS = ("late_answer_weight", "steer_attacks", "noise_weight", "quant_weight", "grid_snap")
#: Their hyperparameters with keyguard's defaults (every new term off; ``steer_attack_coef`` = the ``steer``
#: attack's own default coefficient, ``noise_scale`` = 1% of each matrix's rms; ``grid_snap`` is not a loss weight but
#: the fraction of each trained matrix snapped onto the source grid after training,
#: :mod:`~unpact_mech.unlearning.grid_snap`).
NEW_HYPERPARAMETERS: dict[str, float] = {
    "late_answer_weight": 0.0,
    "steer_attacks": 0.0,
    "steer_attack_coef": 1.0,
    "noise_weight": 0.0,
    "noise_scale": 0.01,
    "quant_weight": 0.0,
    "grid_snap": 0.0,
}
#: The row kind (``TrainTarget.source`` = ``attack:steer``) of the steered copies of the forget rows.
STEER_KIND = "steer"
#: The sample stream the loop draws forget rows from: the steer rows drawn from it are the batch's own forget rows.
FORGET_STREAM = 0


# -- late answer-only misdirection ---------------------------------------------------------------------------------
def answer_positions(tf: "TeacherForcedBatch") -> Tensor:
    """(B, T) bool: the input positions that hold each row's ANSWER tokens (not the question or teacher-forced
    context). ``tf.answer_mask[b, k]`` marks the target ``input_ids[b, start + k + 1]``, so the answer tokens sit at
    ``start + 1 + k`` for the marked k (the last kept position never has a target)."""
    rows, width = tf.input_ids.shape
    mask = torch.zeros((rows, width), dtype=torch.bool, device=tf.answer_mask.device)
    mask[:, tf.start + 1 :] = tf.answer_mask[:, : tf.keep - 1].bool()
    return mask


# -- adversarial steering ------------------------------------------------------------------------------------------
def steering_direction(h_reference: Tensor, h_policy: Tensor, mask: Tensor) -> Tensor:
    """``d = Σ_{b,t} m[b,t]·(h_ref[b,t] − h_pol[b,t]) / max(Σ m, 1)`` — the mean residual difference (original minus
    current policy) over the masked positions (the ``steer`` attack's direction, fitted on one batch). h (B, T, d),
    mask (B, T) -> (d,) float32; zero when nothing is masked."""
    m = mask.to(torch.float32)[..., None]
    return ((h_reference.float() - h_policy.float()) * m).sum((0, 1)) / m.sum().clamp(min=1.0)


@torch.no_grad()
def fit_steering(
    reference: "HookedLM", policy: "HookedLM", input_ids: Tensor, mask: Tensor, layers: Sequence[int], hook: str
) -> dict[int, Tensor]:
    """``{L: d_L}`` at ``blocks.L.<hook>`` from one no-grad forward of each model on ``input_ids`` (B, T), over the
    ``mask`` (B, T) positions (:func:`steering_direction`)."""
    from unpact_mech.models.hooks import hook_name

    names = {int(L): hook_name(int(L), hook) for L in layers}
    ref = reference.forward(input_ids, cache=list(names.values()), logits_to_keep=1).cache
    pol = policy.forward(input_ids, cache=list(names.values()), logits_to_keep=1).cache
    return {L: steering_direction(ref[n], pol[n], mask) for L, n in names.items()}


def steer_interventions(
    batch_layout, hook: str, positions: Sequence[Sequence[int]], directions: Mapping[int, Tensor], coefficient: float
) -> list["Intervention"]:
    """``h[P_b] <- h[P_b] + c_s·d_L`` at ``blocks.L.<hook>`` for every L of ``directions``, at the positions
    ``positions[b]`` of each batch row b (empty for rows not steered): the attack registry's edit (``add_per_item``,
    the ``steer`` attack's own) with one direction shared by every row."""
    from unpact_mech.attacks.edits import add_per_item, edit_at_positions

    rows = len(positions)
    per_row = {L: d.reshape(1, -1).expand(rows, -1) for L, d in directions.items()}
    factory = edit_at_positions(
        hook, list(directions), positions, add_per_item(per_row, coefficient), label="keyguard_steer"
    )
    return list(factory(batch_layout))


# -- relearning smoothing: noisy weights ---------------------------------------------------------------------------
def noise_seed(seed: int, step: int, name: str) -> int:
    """The generator seed of parameter ``name``'s noise at optimizer step ``step`` of a run seeded ``seed`` (the
    name's CRC-32, so the draw does not depend on the order parameters are visited in)."""
    return ((seed * 1_000_003 + step) * 1_000_033 + zlib.crc32(name.encode())) % (2**63)


def noisy_weight(name: str, w: Tensor, *, seed: int, step: int, sigma: float) -> Tensor | None:
    """``W + σ·rms(W)·ε`` (:func:`~unpact_mech.unlearning.losses.smoothed_weight`) for a matrix ``w`` (2-D; None for
    any other parameter: biases and norms are kept), ``ε ~ N(0, 1)`` drawn on the CPU from :func:`noise_seed`."""
    if w.ndim != 2:
        return None
    gen = torch.Generator().manual_seed(noise_seed(seed, step, name))
    eps = torch.randn(tuple(w.shape), generator=gen)
    return losses.smoothed_weight(w, eps.to(w.device), sigma)


# -- quantization-aware: the battery's grid ------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantGrid:
    """A quantization grid for the trained matrices: ``plan`` maps a parameter name to its kind (``Q4_1``, ``Q8_0``,
    ``int8``, ...; :func:`~unpact_mech.attacks.quantize.scheme_plan`). Called as a :class:`WeightPass` weight
    function: the round trip Q(W) of a planned parameter, None for any other."""

    scheme: str
    plan: Mapping[str, str]
    group_size: int = 32

    def __call__(self, name: str, w: Tensor) -> Tensor | None:
        from unpact_mech.attacks.quantize import roundtrip

        kind = self.plan.get(name)
        return None if kind is None else roundtrip(w, kind, self.group_size)


def battery_grid(model: "HookedLM") -> QuantGrid:
    """The grid of the recovery battery's first ``quantize`` condition for ``model``: the source file's GGUF types
    where the model has a GGUF source, else uniform Q4_1 (:func:`~unpact_mech.attacks.battery.quantize_specs`);
    resolved against the model, so a matrix the grid cannot hold is an :class:`InputError` here."""
    from unpact_mech.attacks.battery import quantize_specs
    from unpact_mech.attacks.quantize import scheme_plan
    from unpact_mech.attacks.registry import get_attack

    attack = get_attack(quantize_specs(model)[0]).resolve(model)
    return QuantGrid(attack.scheme, scheme_plan(model, attack.scheme), attack.group_size)  # type: ignore[attr-defined]
