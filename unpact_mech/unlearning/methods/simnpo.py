"""``simnpo`` — SimNPO: reference-free, length-normalised NPO with margin γ, plus retain NLL.

``L = −(2/β)·E_f log σ(−(β/|y|)·log p_θ(y|x) − γ) + α·NLL(D_r)`` (set ``alpha=0`` for the forget term alone).
"""

from __future__ import annotations

from torch import Tensor

from unpact_mech.unlearning import losses
from unpact_mech.unlearning.methods.base import PolicyOutput, Recipe, RetainNLL, UnlearningMethod
from unpact_mech.unlearning.methods.registry import register_unlearning_method


class SimNPOForget(UnlearningMethod):
    def forget_loss(self, out: PolicyOutput) -> Tensor:
        lp, mask = out.logprobs(out.batch.forget_rows)
        return losses.simnpo(
            losses.sequence_logprob(lp, mask), losses.answer_lengths(mask), self.hp["beta"], self.hp["gamma"]
        )


@register_unlearning_method
class SimNPO(RetainNLL, SimNPOForget):
    name = "simnpo"
    summary = "SimNPO: L = -(2/beta)*E_f log sigmoid(-(beta/|y|)*log p_theta(y|x) - gamma) + alpha*NLL(D_r)"
    hyperparameters = {"beta": 2.5, "gamma": 0.0, "alpha": 1.0}
    recipe = Recipe(lr=1e-5, steps=10)
