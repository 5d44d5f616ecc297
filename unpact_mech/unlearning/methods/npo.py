"""``npo`` — negative preference optimisation on sequence log-probs.

``L = (2/β)·E_f log(1 + (p_θ(y|x)/p_ref(y|x))^β)``. ``p_ref`` is the base model: its sequence log-probs of the
forget answers are computed once in :meth:`NPO.setup`, before any update (the reference is frozen, so one pass
replaces a reference forward per step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.scoring.logprob import score_answers
from unpact_mech.unlearning import losses
from unpact_mech.unlearning.methods.base import PolicyOutput, Recipe, UnlearningMethod
from unpact_mech.unlearning.methods.registry import register_unlearning_method

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.unlearning.batches import UnlearningSet


@register_unlearning_method
class NPO(UnlearningMethod):
    name = "npo"
    summary = "negative preference optimisation: L = (2/beta)*E_f log(1 + (p_theta/p_ref)^beta), sequence log-probs"
    hyperparameters = {"beta": 0.1}
    recipe = Recipe(lr=1e-5, steps=4)
    reference_seq_logprob: Tensor | None = None

    def setup(self, model: "HookedLM", data: "UnlearningSet", *, seed: int, batch_size: int = 16) -> None:
        super().setup(model, data, seed=seed, batch_size=batch_size)
        scores = score_answers(
            model, [t.input_prefix for t in data.forget], [t.answer_ids for t in data.forget], batch_size=batch_size
        )
        self.reference_seq_logprob = scores.logprob_sum.to(model.device)

    def forget_loss(self, out: PolicyOutput) -> Tensor:
        if self.reference_seq_logprob is None:
            raise RuntimeError("setup() was not called")
        lp, mask = out.logprobs(out.batch.forget_rows)
        ref = self.reference_seq_logprob[torch.as_tensor(out.batch.forget_index, device=lp.device)]
        return losses.npo(losses.sequence_logprob(lp, mask), ref, self.hp["beta"])
