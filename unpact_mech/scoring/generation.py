"""Greedy answers: left-padded batches through :meth:`HookedLM.generate` (KV cache, interventions on every step).

The answer length cap :data:`DEFAULT_MAX_NEW_TOKENS` = 32 fits a one-sentence answer. Measured on SmolLM2-135M-Instruct
(chat template, greedy) over 441 candidate facts (the built-in set's candidates plus "Who wrote the Harry Potter
books?"): of the 242 answers that contain the gold answer within 64 new tokens, 179 contain it within 12 tokens,
223 within 24 and 228 within 32; the whole first sentence fits in 32 tokens for 363 of the 441 (104 in 12). An answer
that reaches the cap without a stop token is flagged ``truncated`` (:class:`GeneratedAnswer`), so a name cut in half
("... is J.K. Row") is visible as such in the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unpact_mech.models.hooked import DEFAULT_MAX_NEW_TOKENS
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE, InterventionFactory, left_pad, length_batches
from unpact_mech.utils import progress_bar

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "GeneratedAnswer", "generate_answers"]

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


@dataclass(frozen=True)
class GeneratedAnswer:
    """``text``: the stripped greedy continuation (special tokens dropped); ``truncated``: it reached the cap without
    a stop token (the answer may be cut short)."""

    text: str
    truncated: bool


def generate_answers(
    model: "HookedLM",
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
    interventions: InterventionFactory | None = None,
    progress: bool | str = False,
    drop_finished: bool = True,
) -> list[GeneratedAnswer]:
    """The greedy continuation of each prompt (token id lists), decoded, with its truncation flag.

    ``drop_finished``: rows that have stopped leave the batch when the batch's interventions allow it
    (:meth:`HookedLM.can_drop_finished`: none acts on decoding steps, e.g. edits at keyword positions only) — the
    same tokens, fewer rows computed; False keeps every row to the cap (the reference path)."""
    out: list[GeneratedAnswer] = [GeneratedAnswer("", False)] * len(prompts)
    desc = progress if isinstance(progress, str) else "generating"
    stops = set(model.stop_token_ids)
    for idx in progress_bar(
        length_batches([len(p) for p in prompts], batch_size), enabled=bool(progress), desc=desc, leave=False
    ):
        batch = left_pad([prompts[i] for i in idx], model.pad_token_id, idx)
        ivs = interventions(batch.layout) if interventions else ()
        drop = drop_finished and model.can_drop_finished(ivs)
        new = model.generate(
            batch.input_ids, batch.attention_mask, max_new_tokens=max_new_tokens, interventions=ivs, drop_finished=drop
        )
        for row, i in enumerate(idx):
            out[i] = as_answer(model, new[row].tolist(), stops, max_new_tokens)
    return out


def as_answer(model: "HookedLM", new_tokens: Sequence[int], stops: set[int], max_new_tokens: int) -> GeneratedAnswer:
    """The tokens up to the first stop token, decoded and stripped; truncated when no stop token came within
    ``max_new_tokens``."""
    tokens: list[int] = []
    stopped = False
    for t in new_tokens:
        if t in stops:
            stopped = True
            break
        tokens.append(t)
    text = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return GeneratedAnswer(text, truncated=not stopped and len(tokens) >= max_new_tokens)
