"""Evaluate a model on QA items: greedy answer + correctness, teacher-forced LP, first-token rank.

:func:`evaluate_items` returns one row per item (wide); :func:`to_long` gives the long ``results.csv`` format
(docs/concepts.md §2)
(``item_id, split, metric, value`` + ``model``); :func:`summarize_evaluation` the headline numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from unpact_mech.data.contract import extra_columns
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE, InterventionFactory
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS, generate_answers
from unpact_mech.scoring.judges import get_judge, rouge_l_recall
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.prompt_cache import answer_and_score, supports_prompt_cache
from unpact_mech.scoring.tokens import EncodedQA, encode_items

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

METRICS = ("correct", "rouge_l", "logprob", "first_prob", "rank", "truncated")
#: Columns every long row carries besides ``metric`` / ``value`` (the answer text sits next to its scores).
LONG_ID_COLUMNS = ("item_id", "split", "generation")


def evaluate_items(
    model: "HookedLM",
    items: Sequence["QAItem"],
    *,
    encoded: Sequence[EncodedQA] | None = None,
    judge: str = "contains",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
    interventions: InterventionFactory | None = None,
    progress: bool = True,
    prompt_cache: bool = True,
) -> pd.DataFrame:
    """One row per item: ``item_id, split, question, answer, generation, correct, rouge_l, logprob, first_prob,
    rank, truncated`` plus the items' extra fields (a list or dict as its JSON text; no extra is dropped).
    ``encoded`` overrides the prompts (e.g. rewritten questions); ``truncated`` is 1.0 when the greedy answer reached
    ``max_new_tokens`` without a stop token. Without interventions (and outside a :meth:`HookedLM.hooks` context)
    the prompt runs once for the answer and the scores, its shared prefix once per batch
    (:mod:`~unpact_mech.scoring.prompt_cache`); with interventions that edit prompt positions only, finished answers
    leave the decoding batch. ``prompt_cache=False``: two passes, every row decoded to the cap — the reference both
    equal."""
    judge_fn = get_judge(judge)
    encoded = list(encoded) if encoded is not None else encode_items(model, items)
    prompts = [e.prompt.ids for e in encoded]
    gold = [e.answer_ids for e in encoded]
    if prompt_cache and interventions is None and not model.has_context_hooks and supports_prompt_cache(model):
        answers, scores = answer_and_score(
            model, prompts, gold, max_new_tokens=max_new_tokens, batch_size=batch_size,
            progress="answering" if progress else False,
        )  # fmt: skip
    else:
        answers = generate_answers(
            model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, interventions=interventions,
            progress="generating answers" if progress else False, drop_finished=prompt_cache,
        )  # fmt: skip
        scores = score_answers(
            model, prompts, gold, batch_size=batch_size, interventions=interventions,
            progress="scoring answers" if progress else False,
        )  # fmt: skip
    rows: list[dict[str, Any]] = []
    for i, (item, generated) in enumerate(zip(items, answers)):
        text = generated.text
        row = {
            "item_id": item.id,
            "split": item.split,
            "question": encoded[i].prompt.question,
            "answer": item.answer,
            "generation": text,
            "correct": float(judge_fn(text, item.answer, item.aliases)),
            "rouge_l": max(rouge_l_recall(text, a) for a in (item.answer, *item.aliases)),
            "logprob": float(scores.logprob[i]),
            "first_prob": float(scores.first_prob[i]),
            "rank": int(scores.first_rank[i]),
            "truncated": float(generated.truncated),
        }
        row.update(extra_columns(item.extra))  # no name collides: QAItem refuses reserved names when created
        rows.append(row)
    return pd.DataFrame(rows)


def to_long(per_item: pd.DataFrame, *, metrics: Sequence[str] = METRICS, **labels: Any) -> pd.DataFrame:
    """Wide per-item table -> long ``item_id, split, metric, value, generation`` (+ constant ``labels`` columns);
    ``metrics``: the columns that become rows (multiple-choice log-likelihood scoring: its ``MC_METRICS``), their
    values as floats (a bool as 0/1)."""
    ids = [c for c in LONG_ID_COLUMNS if c in per_item]
    long = per_item.melt(id_vars=ids, value_vars=list(metrics), var_name="metric", value_name="value")
    long["value"] = long["value"].astype(float)
    long = long[["item_id", "split", "metric", "value", *ids[2:]]]
    for key, value in labels.items():
        long[key] = value
    return long


def write_evaluation(
    out_dir, per_item: pd.DataFrame, summary: dict[str, Any], run, *, model: str, metrics: Sequence[str] = METRICS
) -> None:
    """run.json, results.csv (long, rows for ``metrics``), summary.json and items.csv (one row per item)."""
    from pathlib import Path

    from unpact_mech.io import atomic_write_text

    run.write(out_dir, to_long(per_item, metrics=metrics, model=model), summary)
    atomic_write_text(Path(out_dir) / "items.csv", per_item.to_csv(index=False))


def summarize_evaluation(per_item: pd.DataFrame) -> dict[str, Any]:
    """``accuracy``, ``accuracy_by_split``, ``mean_logprob``, ``top1_rate``, counts, and ``n_truncated`` (answers
    that reached the length cap; ``n_truncated_wrong`` of them judged wrong, perhaps only because they were cut)."""
    by_split = per_item.groupby("split", sort=True)
    return {
        "n_items": int(len(per_item)),
        "accuracy": float(per_item["correct"].mean()),
        "accuracy_by_split": {k: float(v) for k, v in by_split["correct"].mean().items()},
        "n_by_split": {k: int(v) for k, v in by_split.size().items()},
        "mean_logprob": float(per_item["logprob"].mean()),
        "top1_rate": float((per_item["rank"] == 0).mean()),
        "n_truncated": int(per_item["truncated"].sum()),
        "n_truncated_wrong": int(((per_item["truncated"] == 1) & (per_item["correct"] == 0)).sum()),
    }
