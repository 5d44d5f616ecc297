"""``ga`` — gradient ascent on the forget answers: ``L = −NLL(D_f)``."""

from __future__ import annotations

from torch import Tensor

from unpact_mech.unlearning import losses
from unpact_mech.unlearning.methods.base import PolicyOutput, Recipe, UnlearningMethod
from unpact_mech.unlearning.methods.registry import register_unlearning_method


@register_unlearning_method
class GA(UnlearningMethod):
    name = "ga"
    summary = "gradient ascent on the forget answers: L = -NLL(D_f)"
    recipe = Recipe(lr=1e-5, steps=4)

    def forget_loss(self, out: PolicyOutput) -> Tensor:
        return losses.gradient_ascent(*out.logprobs(out.batch.forget_rows))
