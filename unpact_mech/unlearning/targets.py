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

An item whose greedy answer does not contain its gold answer (or an alias) falls back to ``gold``. Token positions
come from the generated token ids themselves (no re-tokenisation of text), so the context is exactly what the
model produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from unpact_mech.data.text import keyword_spans
from unpact_mech.errors import InputError
from unpact_mech.scoring.batching import left_pad, length_batches
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS
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


def answer_span(text: str, answers: Sequence[str]) -> tuple[int, int] | None:
    """Character span of the earliest (then longest) word-bounded, case-insensitive occurrence of any answer."""
    spans = [span for a in answers for span in keyword_spans(text, a)]
    if not spans:
        return None
    return min(spans, key=lambda s: (s[0], -(s[1] - s[0])))


def locate_answer(tokenizer, tokens: Sequence[int], answers: Sequence[str]) -> tuple[int, int] | None:
    """Token range ``[i, j)`` of ``tokens`` covering the answer's characters in their decoded text, or None.

    Character offsets come from decoding growing prefixes of ``tokens`` (a token's span is what it adds to the text).
    """
    ends = [len(tokenizer.decode(list(tokens[: k + 1]), skip_special_tokens=True)) for k in range(len(tokens))]
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    span = answer_span(text, answers)
    if span is None:
        return None
    a, b = span
    starts = [0] + ends[:-1]
    covering = [k for k in range(len(tokens)) if starts[k] < b and ends[k] > a]
    return (covering[0], covering[-1] + 1) if covering else None


def build_targets(
    model: "HookedLM",
    items: Sequence["QAItem"],
    encoded: Sequence[EncodedQA],
    *,
    target: str = "generated",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
) -> list[TrainTarget]:
    """One :class:`TrainTarget` per item (greedy generation with the model's CURRENT weights for ``generated``)."""
    if target not in TRAIN_TARGETS:
        raise InputError(f"unknown training target {target!r}; choose one of: {', '.join(TRAIN_TARGETS)}")
    gold = [TrainTarget(e.item_id, e.prompt, (), tuple(e.answer_ids), "gold") for e in encoded]
    if target == "gold" or not items:
        return gold
    out = list(gold)
    stops = set(model.stop_token_ids)
    prompts = [e.prompt.ids for e in encoded]
    with torch.no_grad():
        for idx in length_batches([len(p) for p in prompts], batch_size):
            batch = left_pad([prompts[i] for i in idx], model.pad_token_id, idx)
            new = model.generate(
                batch.input_ids.to(model.device), batch.attention_mask.to(model.device), max_new_tokens=max_new_tokens
            )
            for row, i in enumerate(idx):
                tokens: list[int] = []
                for t in new[row].tolist():
                    if t in stops:
                        break
                    tokens.append(t)
                where = locate_answer(model.tokenizer, tokens, (items[i].answer, *items[i].aliases))
                if where is not None:
                    a, b = where
                    model.check_length(len(prompts[i]) + b, f"item {items[i].id!r}")
                    out[i] = TrainTarget(
                        items[i].id, encoded[i].prompt, tuple(tokens[:a]), tuple(tokens[a:b]), "generated"
                    )
    return out
