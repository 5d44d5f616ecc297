"""Training targets: which tokens an unlearning loss sees after each prompt.

Two choices (``target=``):

* ``generated`` (default) — the base model's OWN greedy answer, cut right after the gold answer (or an alias):
  ``prompt → "The capital of France is" + " Paris"``. The words the model writes before the answer are teacher-
  forced context (``context_ids``); the loss covers the answer tokens only (``answer_ids``). This targets the
  path the model actually generates: an instruct model answers in sentences, so pushing down the bare answer
  right after the prompt (``gold``) barely touches its greedy answer while it already damages retain answers.
  Measured on SmolLM2 + builtin:real_facts, GA, lr 1e-5, 8 steps: ``gold`` left forget accuracy at 0.81 with
  retain at 0.75; ``generated`` — see docs/unlearning.md.
* ``gold`` — the gold answer right after the prompt (the paper's LP(x, y) target; no context).

An item whose greedy answer does not contain its gold answer (or an alias) falls back to ``gold``. The own answer is
located by :func:`unpact_mech.scoring.own_answer.own_answers` (also the attribution target ``answer_in_context``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unpact_mech.errors import InputError
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS
from unpact_mech.scoring.own_answer import own_answers
from unpact_mech.scoring.tokens import EncodedPrompt, EncodedQA

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

TRAIN_TARGETS = ("generated", "gold")


@dataclass(frozen=True)
class TrainTarget:
    """``prompt`` + ``context_ids`` is teacher-forced context; ``answer_ids`` are the tokens the loss sees."""

    item_id: str
    prompt: EncodedPrompt
    context_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    source: str  # "generated" | "gold"

    @property
    def input_prefix(self) -> tuple[int, ...]:
        return tuple(self.prompt.ids) + self.context_ids


def build_targets(
    model: "HookedLM",
    items: Sequence["QAItem"],
    encoded: Sequence[EncodedQA],
    *,
    target: str = "generated",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
) -> list[TrainTarget]:
    """One :class:`TrainTarget` per item (greedy generation with the model's CURRENT weights for ``generated``)."""
    if target not in TRAIN_TARGETS:
        raise InputError(f"unknown training target {target!r}; choose one of: {', '.join(TRAIN_TARGETS)}")
    gold = [TrainTarget(e.item_id, e.prompt, (), tuple(e.answer_ids), "gold") for e in encoded]
    if target == "gold" or not items:
        return gold
    out = list(gold)
    for i, own in enumerate(own_answers(model, items, encoded, max_new_tokens=max_new_tokens, batch_size=batch_size)):
        if own is not None:
            out[i] = TrainTarget(items[i].id, encoded[i].prompt, own.context_ids, own.answer_ids, "generated")
    return out
