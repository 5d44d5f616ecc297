"""``ga_klr`` — gradient ascent + KL to the frozen reference on retain: ``L = −NLL(D_f) + α·KL(p_ref‖p_θ)(D_r)``."""

from __future__ import annotations

from unpact_mech.unlearning.methods.base import Recipe, RetainKL
from unpact_mech.unlearning.methods.ga import GA
from unpact_mech.unlearning.methods.registry import register_unlearning_method


@register_unlearning_method
class GAKLR(RetainKL, GA):
    name = "ga_klr"
    summary = "gradient ascent + retain KL: L = -NLL(D_f) + alpha*KL(p_ref||p_theta)(D_r)"
    hyperparameters = {"alpha": 1.0}
    recipe = Recipe(lr=1e-5, steps=4)
