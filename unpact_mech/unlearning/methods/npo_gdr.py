"""``npo_gdr`` — NPO + gradient descent on retain: ``L = L_NPO(D_f) + α·NLL(D_r)``."""

from __future__ import annotations

from unpact_mech.unlearning.methods.base import Recipe, RetainNLL
from unpact_mech.unlearning.methods.npo import NPO
from unpact_mech.unlearning.methods.registry import register_unlearning_method


@register_unlearning_method
class NPOGDR(RetainNLL, NPO):
    name = "npo_gdr"
    summary = "NPO + retain NLL: L = L_NPO(D_f) + alpha*NLL(D_r)"
    hyperparameters = {"beta": 0.1, "alpha": 4.0}
    recipe = Recipe(lr=1e-5, steps=8)
