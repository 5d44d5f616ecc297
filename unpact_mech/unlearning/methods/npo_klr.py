"""``npo_klr`` — NPO + KL to the frozen reference on retain: ``L = L_NPO(D_f) + α·KL(p_ref‖p_θ)(D_r)``."""

from __future__ import annotations

from unpact_mech.unlearning.methods.base import Recipe, RetainKL
from unpact_mech.unlearning.methods.npo import NPO
from unpact_mech.unlearning.methods.registry import register_unlearning_method


@register_unlearning_method
class NPOKLR(RetainKL, NPO):
    name = "npo_klr"
    summary = "NPO + retain KL: L = L_NPO(D_f) + alpha*KL(p_ref||p_theta)(D_r)"
    hyperparameters = {"beta": 0.1, "alpha": 1.0}
    recipe = Recipe(lr=1e-5, steps=4)
