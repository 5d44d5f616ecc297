"""The registered variants of ``keyguard``: the same method and recipe with second-round terms switched on
(:mod:`~unpact_mech.unlearning.methods.keyguard`'s docstring has every term).

====================  ==========================================================================================
name                  hyperparameters that differ from ``keyguard``'s
====================  ==========================================================================================
keyguard_late_answer  late_weight 0, late_answer_weight 0.3 (the late misdirection on the answer tokens only)
keyguard_steer        steer_attacks 1 (misdirection under the steer attack re-fitted every step)
keyguard_smooth       noise_weight 1 (the forget part also at randomly perturbed weights, σ = noise_scale)
keyguard_quant        quant_weight 1 (the forget part also at the re-quantized weights, straight-through)
keyguard2             late_weight 0 and all four above on
keyguard_grid         grid_snap 0.03 (after training, the 3% largest updates per matrix snapped onto the grid)
====================  ==========================================================================================
"""

from __future__ import annotations

from unpact_mech.unlearning.methods.keyguard import KeyGuard
from unpact_mech.unlearning.methods.registry import register_unlearning_method


@register_unlearning_method
class KeyGuardLateAnswer(KeyGuard):
    name = "keyguard_late_answer"
    summary = "keyguard with the late-layer misdirection on the answer tokens only (w_la 0.3 instead of w_l)"
    hyperparameters = KeyGuard.hyperparameters | {"late_weight": 0.0, "late_answer_weight": 0.3}


@register_unlearning_method
class KeyGuardSteer(KeyGuard):
    name = "keyguard_steer"
    summary = "keyguard + misdirection under the steer attack, its directions re-fitted on the policy every step"
    hyperparameters = KeyGuard.hyperparameters | {"steer_attacks": 1.0}


@register_unlearning_method
class KeyGuardSmooth(KeyGuard):
    name = "keyguard_smooth"
    summary = "keyguard + the forget terms at randomly perturbed weights (smoothing against relearning)"
    hyperparameters = KeyGuard.hyperparameters | {"noise_weight": 1.0}


@register_unlearning_method
class KeyGuardQuant(KeyGuard):
    name = "keyguard_quant"
    summary = "keyguard + the forget terms at the re-quantized weights (straight-through; against quantization)"
    hyperparameters = KeyGuard.hyperparameters | {"quant_weight": 1.0}


@register_unlearning_method
class KeyGuard2(KeyGuard):
    name = "keyguard2"
    summary = "keyguard with all four second-round terms: late answer-only, steer rows, noisy and quantized passes"
    hyperparameters = KeyGuard.hyperparameters | {
        "late_weight": 0.0,
        "late_answer_weight": 0.3,
        "steer_attacks": 1.0,
        "noise_weight": 1.0,
        "quant_weight": 1.0,
    }


@register_unlearning_method
class KeyGuardGrid(KeyGuard):
    name = "keyguard_grid"
    summary = (
        "keyguard + grid snapping: the largest updates moved one whole step of the source grid (vs requantization)"
    )
    hyperparameters = KeyGuard.hyperparameters | {"grid_snap": 0.03}
