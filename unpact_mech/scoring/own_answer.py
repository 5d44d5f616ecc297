"""The model's own answer sentence: where the gold answer sits inside what the model greedily writes.

An instruct model answers in a sentence ("The capital of France is Paris."), so the log-prob of the BARE answer right
after the prompt scores a continuation the model never produces. :func:`own_answers` generates each item's greedy
answer once, finds the gold answer (or an alias) in it, and returns an :class:`OwnAnswer`: the tokens the model wrote
before the answer (``context_ids``) and the answer's own tokens in that sentence (``answer_ids``) — token ids taken
from the generation itself, no re-tokenisation. It serves two stages with the same definition:

* unlearning's ``generated`` training target (the loss on the answer tokens after the model's own context);
* attribution's ``answer_in_context`` target (the mean log-prob of those answer tokens, teacher-forced after the
  prompt and the context — computed once on the ORIGINAL model and reused, token for token, for the unlearned one).

An item whose greedy answer does not contain its gold answer has no own answer (None): callers fall back to the bare
answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from unpact_mech.data.text import keyword_spans
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE, left_pad, length_batches
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.tokens import EncodedQA


@dataclass(frozen=True)
class OwnAnswer:
    """``context_ids``: what the model wrote before the answer; ``answer_ids``: the answer's tokens in its sentence."""

    context_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


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


def own_answers(
    model: "HookedLM",
    items: Sequence["QAItem"],
    encoded: Sequence["EncodedQA"],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
) -> list[OwnAnswer | None]:
    """One :class:`OwnAnswer` per item from ``model``'s greedy answer with its CURRENT weights (None where the gold
    answer is not in it), aligned with ``items``."""
    out: list[OwnAnswer | None] = [None] * len(items)
    stops = set(model.stop_token_ids)
    prompts = [e.prompt.ids for e in encoded]
    with torch.no_grad():
        for idx in length_batches([len(p) for p in prompts], batch_size):
            batch = left_pad([prompts[i] for i in idx], model.pad_token_id, idx)
            new = model.generate(
                batch.input_ids.to(model.device), batch.attention_mask.to(model.device), max_new_tokens=max_new_tokens,
                drop_finished=not model.has_context_hooks,  # finished answers leave the batch (same tokens)
            )  # fmt: skip
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
                    out[i] = OwnAnswer(tuple(tokens[:a]), tuple(tokens[a:b]))
    return out
