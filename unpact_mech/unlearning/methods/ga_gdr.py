"""``ga_gdr`` — gradient ascent + gradient descent on retain: ``L = −NLL(D_f) + α·NLL(D_r)``."""

from __future__ import annotations

from unpact_mech.unlearning.methods.base import Recipe, RetainNLL
from unpact_mech.unlearning.methods.ga import GA
from unpact_mech.unlearning.methods.registry import register_unlearning_method


@register_unlearning_method
class GAGDR(RetainNLL, GA):
    name = "ga_gdr"
    summary = "gradient ascent + retain NLL: L = -NLL(D_f) + alpha*NLL(D_r)"
    hyperparameters = {"alpha": 4.0}
    recipe = Recipe(lr=1e-5, steps=8)
