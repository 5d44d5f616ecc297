"""``task_vector`` — negate the task vector of fine-tuning on the forget set.

The loop fine-tunes the model on the forget answers (``L = NLL(D_f)``, descent) to θ_ft, starting from the base
weights θ, which are kept as a state-dict copy; the unlearned weights are then ``θ − s·(θ_ft − θ)``
(:func:`unpact_mech.unlearning.task_vector.negate`), written back into the same module. Dynamics evaluations
during fine-tuning evaluate ``θ − s·(θ_t − θ)`` for the current θ_t.

Trainable by default: the MLP weights of every layer (``--trainable`` overrides). On SmolLM2 with the built-in facts
this was the best trade-off measured (docs/unlearning.md): negating a full-model task vector removed the forget
answers only together with the retain answers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torch import Tensor

from unpact_mech.errors import InputError
from unpact_mech.unlearning import losses
from unpact_mech.unlearning.methods.base import PolicyOutput, Recipe, UnlearningMethod
from unpact_mech.unlearning.methods.registry import register_unlearning_method
from unpact_mech.unlearning.task_vector import negate

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


@register_unlearning_method
class TaskVector(UnlearningMethod):
    name = "task_vector"
    summary = "task vector: fine-tune on D_f (NLL) to theta_ft, then theta - s*(theta_ft - theta)"
    hyperparameters = {"scale": 1.0}
    recipe = Recipe(lr=1e-5, steps=6)
    transforms_weights = True

    def default_trainable(self, model: "HookedLM") -> str:
        return rf"^{re.escape(model.arch.layers)}\.\d+\.{re.escape(model.arch.mlp)}\."

    def check_hyperparameters(self) -> None:
        super().check_hyperparameters()
        if self.hp["scale"] <= 0:
            raise InputError(f"method task_vector: scale must be > 0, got {self.hp['scale']}")

    def forget_loss(self, out: PolicyOutput) -> Tensor:
        return losses.nll(*out.logprobs(out.batch.forget_rows))

    def unlearned_weights(self, base: dict[str, Tensor], trained: dict[str, Tensor]) -> dict[str, Tensor]:
        return negate(base, trained, self.hp["scale"])
