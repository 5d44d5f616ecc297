"""Teacher-forced answer scoring: the paper's LP and the gold answer's first-token rank.

LP(x, y) = (1/T) * sum_k log p(y_k | x, y_<k)  — mean over the T answer tokens (the prompt format supplies the
separator between x and y). rank = #{v : logit_v > logit_{y_1}} at the first answer position (0 = top-1).

The pure functions work on tensors; :func:`score_answers` batches items (right padding, logits only where
needed) and equals scoring them one by one to float precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.scoring.batching import EVAL_BATCH_SIZE, InterventionFactory, length_batches, right_pad_teacher_forced
from unpact_mech.utils import progress_bar

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(target) per position: logits (..., V), targets (...) -> (...), in float32 on the logits' device."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.to(logits.device).unsqueeze(-1)).squeeze(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (B, K) over ``mask`` (B, K) per row -> (B,)."""
    mask = mask.to(values.device, values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def token_rank(logits: Tensor, token: Tensor) -> Tensor:
    """Rank of ``token`` (B,) in ``logits`` (B, V): number of strictly larger logits (0 = top-1)."""
    gold = logits.gather(-1, token.to(logits.device).unsqueeze(-1))
    return (logits > gold).sum(-1)


@dataclass(frozen=True)
class AnswerScores:
    """Per-item LP (mean answer log-prob), sum log-prob, first-token probability and rank (all (N,))."""

    logprob: Tensor
    logprob_sum: Tensor
    first_prob: Tensor
    first_rank: Tensor


def score_answers(
    model: "HookedLM",
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    interventions: InterventionFactory | None = None,
    progress: bool | str = False,
) -> AnswerScores:
    """Teacher-forced scores of ``answers[i]`` after ``prompts[i]`` (token id lists), batched by length."""
    n = len(prompts)
    lp, lp_sum, p1, rank = (torch.zeros(n) for _ in range(4))
    rank = rank.long()
    batches = length_batches([len(p) + len(a) for p, a in zip(prompts, answers)], batch_size)
    desc = progress if isinstance(progress, str) else "scoring answers"
    with torch.no_grad():
        for idx in progress_bar(batches, enabled=bool(progress), desc=desc, leave=False):
            tf = right_pad_teacher_forced([prompts[i] for i in idx], [answers[i] for i in idx], model.pad_token_id, idx)
            ivs = interventions(tf.layout) if interventions else ()
            logits = model.forward(tf.input_ids, interventions=ivs, logits_to_keep=tf.keep).logits
            tok_lp = token_logprobs(logits, tf.targets)
            rows = torch.arange(len(idx))
            first_logits = logits[rows, tf.first].float()
            first_tok = tf.targets[rows, tf.first]
            ii = torch.tensor(idx)
            lp[ii] = masked_mean(tok_lp, tf.answer_mask)
            lp_sum[ii] = (tok_lp * tf.answer_mask).sum(-1)
            p1[ii] = torch.softmax(first_logits, -1).gather(-1, first_tok[:, None]).squeeze(-1)
            rank[ii] = token_rank(first_logits, first_tok)
    return AnswerScores(lp, lp_sum, p1, rank)
