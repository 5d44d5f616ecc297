"""What is attributed: named targets (in the spirit of inseq's step functions).

A target maps the teacher-forced logits of a batch to one number per row, and names its linear *readout* — the
weighted answer-token logits that the direct-path methods (attention paths, residual stream) decompose.

=====================  ==========================================================  ==================================
name                   value f (per row)                                           readout decomposed by direct paths
=====================  ==========================================================  ==================================
``answer``             LP(x, y) = mean_k log p(y_k | x, y_<k): the BARE gold       mean_k logit_{y_k} at the same
                       answer right after the prompt (the paper's target)          positions
``answer_in_context``  mean_k log p(a_k | x, c, a_<k): the answer's tokens a       mean_k logit_{a_k}
                       inside the ORIGINAL model's own greedy sentence, after its
                       own words c (:mod:`unpact_mech.scoring.own_answer`)
``first_logit``        logit of the first bare answer token y_1                    logit_{y_1} (the same: exact)
=====================  ==========================================================  ==================================

``answer_in_context`` is the default for chat-format prompts (``auto``): an instruct model answers in a sentence
("The capital of France is Paris."), so the bare answer right after the prompt is a continuation it never writes.
Its context c is recorded once per item on the ORIGINAL model and teacher-forced unchanged on the unlearned one
(same tokens); an item whose sentence lacks the answer falls back to the bare answer. The batch's answer mask
covers the whole teacher-forced continuation c + a; :func:`scored_mask` keeps the answer part.

LP is not linear in the residual stream (its log-sum-exp normaliser mixes every vocabulary entry), so the
direct-path methods decompose the answer-token logits (LOGIT units, not nats) that LP is built from; the normaliser
is shared by all components and not attributed. LP itself is computed only through :mod:`unpact_mech.scoring.logprob`.
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

    Positions index the teacher-forced sequence ``prompt + context + answer``: the logit predicting answer token k
    sits at position ``prefix_len - 1 + k`` with ``prefix_len = len(prompt) + len(context)``.
    """

    positions: Tensor
    tokens: Tensor
    weights: Tensor


def scored_mask(answer_mask: Tensor, n_context: int) -> Tensor:
    """The answer positions a target scores: ``answer_mask`` (B, K) without each row's first ``n_context`` True
    entries (the teacher-forced context before the answer)."""
    if n_context <= 0:
        return answer_mask
    return answer_mask & (answer_mask.long().cumsum(-1) > n_context)


def first_answer_index(answer_mask: Tensor) -> Tensor:
    """Index of each row's first answer target: (B, K) bool -> (B,) long."""
    return answer_mask.long().argmax(-1)


class Target(ABC):
    """A scalar function of the teacher-forced answer logits."""

    name: ClassVar[str]
    description: ClassVar[str]
    readout_description: ClassVar[str]
    #: Whether the answer is scored inside the original model's own answer sentence (needs its context).
    in_context: ClassVar[bool] = False

    @abstractmethod
    def value(self, logits: Tensor, targets: Tensor, answer_mask: Tensor) -> Tensor:
        """``logits`` (B, K, V) at the kept positions; ``targets`` (B, K) the next tokens; ``answer_mask`` (B, K)
        marks the answer targets. Returns (B,). Differentiable."""

    @abstractmethod
    def readout(self, prefix_len: int, answer_ids: Sequence[int]) -> Readout:
        """The linear readout (answer-token logits) that direct-path methods decompose for this target
        (``prefix_len``: the tokens before the scored answer, prompt + context)."""


class AnswerTarget(Target):
    name = "answer"
    description = "teacher-forced mean log-prob of the bare gold answer right after the prompt (the paper's LP)"
    readout_description = "mean logit of the gold answer tokens at their teacher-forced positions"

    def value(self, logits: Tensor, targets: Tensor, answer_mask: Tensor) -> Tensor:
        return masked_mean(token_logprobs(logits, targets), answer_mask)

    def readout(self, prefix_len: int, answer_ids: Sequence[int]) -> Readout:
        n = len(answer_ids)
        return Readout(
            positions=torch.arange(prefix_len - 1, prefix_len - 1 + n),
            tokens=torch.tensor(list(answer_ids), dtype=torch.long),
            weights=torch.full((n,), 1.0 / n),
        )


class AnswerInContextTarget(AnswerTarget):
    name = "answer_in_context"
    description = "teacher-forced mean log-prob of the answer's tokens inside the original model's own answer sentence"
    readout_description = "mean logit of the answer tokens inside the original's own sentence"
    in_context = True


class FirstLogitTarget(Target):
    name = "first_logit"
    description = "logit of the gold answer's first token"
    readout_description = "logit of the gold answer's first token"

    def value(self, logits: Tensor, targets: Tensor, answer_mask: Tensor) -> Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        first = first_answer_index(answer_mask).to(logits.device)
        return logits[rows, first].float().gather(-1, targets.to(logits.device)[rows, first][:, None]).squeeze(-1)

    def readout(self, prefix_len: int, answer_ids: Sequence[int]) -> Readout:
        return Readout(
            positions=torch.tensor([prefix_len - 1]),
            tokens=torch.tensor([answer_ids[0]], dtype=torch.long),
            weights=torch.ones(1),
        )


TARGETS: dict[str, Target] = {t.name: t for t in (AnswerTarget(), AnswerInContextTarget(), FirstLogitTarget())}
#: The default: ``answer_in_context`` for chat-format prompts, ``answer`` otherwise (:func:`resolve_target_name`).
AUTO = "auto"


def resolve_target_name(target: str, model=None) -> str:
    """``auto`` -> ``answer_in_context`` when ``model`` formats prompts with a chat template, else ``answer``."""
    if target != AUTO:
        return target
    chat = model is not None and getattr(model.prompt_format, "kind", "") == "chat"
    return "answer_in_context" if chat else "answer"


def get_target(target: "str | Target", model=None) -> Target:
    """A :class:`Target` by name (``auto`` resolved for ``model``), or pass one through; unknown names raise
    :class:`InputError`."""
    if isinstance(target, Target):
        return target
    name = resolve_target_name(target, model)
    if name not in TARGETS:
        raise InputError(f"unknown target {target!r}; choose one of: {', '.join([AUTO, *TARGETS])}")
    return TARGETS[name]
