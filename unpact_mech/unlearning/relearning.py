"""The training objective of the relearning attacks (:mod:`unpact_mech.attacks.relearn`), run by the unlearning loop.

Relearning is not an unlearning method: this class is never registered, so ``unpact unlearn --method`` does not
offer it. It lives with the losses and the loop it uses.
"""

from __future__ import annotations

from torch import Tensor

from unpact_mech.unlearning import losses
from unpact_mech.unlearning.methods.base import PolicyOutput, Recipe, UnlearningMethod


class RelearnNLL(UnlearningMethod):
    """Fine-tuning on the gold answers: ``L = NLL(D)`` on the batch's rows (the loop's "forget" rows hold the
    relearning items; there is no retain term)."""

    name = "relearn"
    summary = "relearning: NLL descent on the gold answers of the relearning items"
    #: = the relearning conditions' defaults (``unpact_mech.attacks.relearn.DEFAULT_*``, equal by test); the attacks
    #: pass their own TrainConfig, so this is what ``unlearn(..., method=RelearnNLL())`` would use.
    recipe = Recipe(lr=1e-5, steps=5, batch_size=10)

    def forget_loss(self, out: PolicyOutput) -> Tensor:
        return losses.nll(*out.logprobs(out.batch.forget_rows))
