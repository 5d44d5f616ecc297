"""Greedy answers: left-padded batches through :meth:`HookedLM.generate` (KV cache, interventions on every step)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from unpact_mech.scoring.batching import InterventionFactory, left_pad, length_batches

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

DEFAULT_MAX_NEW_TOKENS = 12


def greedy_answers(
    model: "HookedLM",
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    interventions: InterventionFactory | None = None,
    progress: bool | str = False,
) -> list[str]:
    """Decode the greedy continuation of each prompt (token id lists) to stripped text (special tokens dropped)."""
    out: list[str] = [""] * len(prompts)
    desc = progress if isinstance(progress, str) else "generating"
    stops = set(model.stop_token_ids)
    for idx in tqdm(
        length_batches([len(p) for p in prompts], batch_size), desc=desc, disable=not progress, leave=False
    ):
        batch = left_pad([prompts[i] for i in idx], model.pad_token_id, idx)
        ivs = interventions(batch.layout) if interventions else ()
        new = model.generate(batch.input_ids, batch.attention_mask, max_new_tokens=max_new_tokens, interventions=ivs)
        for row, i in enumerate(idx):
            tokens = []
            for t in new[row].tolist():
                if t in stops:
                    break
                tokens.append(t)
            out[i] = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return out
