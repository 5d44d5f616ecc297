"""What is attributed: named targets (in the spirit of inseq's step functions).

A target maps the teacher-forced logits of a batch to one number per row, and names its linear *readout* — the
weighted answer-token logits that the direct-path methods (attention paths, residual stream) decompose.

=================  =======================================================  =======================================
name               value f (per row)                                        readout decomposed by direct paths
=================  =======================================================  =======================================
``logprob``        LP(x, y) = mean_k log p(y_k | x, y_<k) (the paper's)     mean_k logit_{y_k} at the same positions
``first_logit``    logit of the first answer token y_1                      logit_{y_1} (the same: exact)
=================  =======================================================  =======================================

LP is not linear in the residual stream (its log-sum-exp normaliser mixes every vocabulary entry), so the
direct-path methods decompose the answer-token logits that LP is built from; the normaliser is shared by all
components and not attributed. LP itself is computed only through :mod:`unpact_mech.scoring.logprob`.
Add a target by subclassing :class:`Target` and registering it in :data:`TARGETS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unpact_mech.errors import InputError
from unpact_mech.scoring.logprob import masked_mean, token_logprobs


@dataclass(frozen=True)
class Readout:
    """A linear readout ``sum_j weights[j] * logit_{tokens[j]}`` at sequence ``positions[j]`` (all (J,)).

    Positions index the teacher-forced sequence ``prompt + answer``: the logit predicting answer token k sits
    at position ``len(prompt) - 1 + k``.
    """

    positions: Tensor
    tokens: Tensor
    weights: Tensor


def first_answer_index(answer_mask: Tensor) -> Tensor:
    """Index of each row's first answer target: (B, K) bool -> (B,) long."""
    return answer_mask.long().argmax(-1)


class Target(ABC):
    """A scalar function of the teacher-forced answer logits."""

    name: ClassVar[str]
    description: ClassVar[str]
    readout_description: ClassVar[str]

    @abstractmethod
    def value(self, logits: Tensor, targets: Tensor, answer_mask: Tensor) -> Tensor:
        """``logits`` (B, K, V) at the kept positions; ``targets`` (B, K) the next tokens; ``answer_mask`` (B, K)
        marks the answer targets. Returns (B,). Differentiable."""

    @abstractmethod
    def readout(self, prompt_len: int, answer_ids: Sequence[int]) -> Readout:
        """The linear readout (answer-token logits) that direct-path methods decompose for this target."""


class LogProbTarget(Target):
    name = "logprob"
    description = "teacher-forced mean log-prob of the gold answer tokens (the paper's LP)"
    readout_description = "mean logit of the gold answer tokens at their teacher-forced positions"

    def value(self, logits: Tensor, targets: Tensor, answer_mask: Tensor) -> Tensor:
        return masked_mean(token_logprobs(logits, targets), answer_mask)

    def readout(self, prompt_len: int, answer_ids: Sequence[int]) -> Readout:
        n = len(answer_ids)
        return Readout(
            positions=torch.arange(prompt_len - 1, prompt_len - 1 + n),
            tokens=torch.tensor(list(answer_ids), dtype=torch.long),
            weights=torch.full((n,), 1.0 / n),
        )


class FirstLogitTarget(Target):
    name = "first_logit"
    description = "logit of the gold answer's first token"
    readout_description = "logit of the gold answer's first token"

    def value(self, logits: Tensor, targets: Tensor, answer_mask: Tensor) -> Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        first = first_answer_index(answer_mask)
        return logits[rows, first].float().gather(-1, targets[rows, first][:, None]).squeeze(-1)

    def readout(self, prompt_len: int, answer_ids: Sequence[int]) -> Readout:
        return Readout(
            positions=torch.tensor([prompt_len - 1]),
            tokens=torch.tensor([answer_ids[0]], dtype=torch.long),
            weights=torch.ones(1),
        )


TARGETS: dict[str, Target] = {t.name: t for t in (LogProbTarget(), FirstLogitTarget())}


def get_target(target: "str | Target") -> Target:
    """A :class:`Target` by name (or pass one through); unknown names raise :class:`InputError`."""
    if isinstance(target, Target):
        return target
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[target]
