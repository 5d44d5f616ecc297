"""Before/after comparison of two attributions of the same items (e.g. the original vs the unlearned model).

Works on the long frames of :mod:`unpact_mech.attribution.results` (pure pandas, no model):

* :func:`diff_frames` — rows matched on identifying columns, optionally aggregated (summed) to coarser keys:
  ``before``, ``after`` and ``diff = after - before`` per row (long: one row per key and metric);
* :func:`compare_units` / :func:`compare_heads` / :func:`compare_layers` — the per token/word, per (layer,
  head) and per (layer, component) views;
* :func:`keytoken_change` — did the KeyTokens lose more contribution than the other tokens? KeyTokens come
  from the BEFORE attribution (the original model, as in the paper), by the α/β rule (``keytoken_alpha``,
  ``keytoken_beta``). Per item, the mean
  contribution of its KeyTokens and of its other units, before and after; the summary averages over items
  (macro), overall and per split, and repeats the comparison for the annotated keywords.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from unpact_mech.attribution.keytokens import DEFAULT_KEYTOKEN_ALPHA, DEFAULT_KEYTOKEN_BETA, keytoken_mask
from unpact_mech.attribution.results import CONTRIBUTION

UNIT_KEYS = ("item_id", "split", "method", "target", "level", "unit", "position", "token", "word_index", "is_keyword")
HEAD_KEYS = ("item_id", "split", "method", "target", "layer", "head")
LAYER_KEYS = ("item_id", "split", "method", "target", "layer", "component")


def diff_frames(
    before: pd.DataFrame,
    after: pd.DataFrame,
    keys: Sequence[str],
    *,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Match ``before`` and ``after`` rows on ``keys`` + ``metric`` (summing ``value`` over any other columns)
    -> ``keys, metric, before, after, diff``. Rows present on one side only get NaN on the other."""
    keys = [k for k in keys if k in before.columns and k in after.columns]
    cols = keys + ["metric"]

    def agg(df: pd.DataFrame) -> pd.DataFrame:
        if metrics is not None:
            df = df[df["metric"].isin(metrics)]
        out = df.groupby(cols, sort=False, dropna=False)["value"].sum(min_count=1).reset_index()
        return out.assign(_order=range(len(out)))

    b, a = agg(before), agg(after)
    merged = b.merge(a.drop(columns="_order"), on=cols, how="outer", suffixes=("_before", "_after"))
    merged = (
        merged.sort_values("_order", na_position="last", kind="stable").drop(columns="_order").reset_index(drop=True)
    )
    merged = merged.rename(columns={"value_before": "before", "value_after": "after"})
    merged["diff"] = merged["after"] - merged["before"]
    return merged


def compare_units(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per token/word contribution before vs after (``metric == "contribution"``)."""
    return diff_frames(before, after, UNIT_KEYS, metrics=[CONTRIBUTION])


def compare_heads(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, head) attention-path contribution (summed over source positions) before vs after."""
    return diff_frames(before, after, HEAD_KEYS, metrics=["attention_path"])


def compare_layers(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, component) direct logit contribution and logit-lens metrics before vs after."""
    return diff_frames(
        before, after, LAYER_KEYS, metrics=["direct_logit", "lens_logprob", "lens_first_prob", "lens_first_rank"]
    )


def mark_keytokens(
    units: pd.DataFrame,
    *,
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA,
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA,
    column: str = "value",
) -> pd.Series:
    """KeyToken flags for a frame of unit contributions (one item per ``item_id``), by the α/β rule on
    ``column``. Returns a bool Series aligned with ``units``."""
    flags = pd.Series(False, index=units.index)
    for _, group in units.groupby("item_id", sort=False):
        scores = torch.tensor(group[column].to_numpy(dtype=np.float64), dtype=torch.float64)
        flags.loc[group.index] = keytoken_mask(scores, keytoken_alpha, keytoken_beta).numpy()
    return flags


def keytoken_change(
    unit_diff: pd.DataFrame,
    *,
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA,
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per item and group (``keytokens`` / ``other``; ``keywords`` / ``non_keywords`` when annotated): the mean
    unit contribution before and after, and the summary averaged over items (overall and per split).

    ``unit_diff`` is :func:`compare_units`' output; KeyTokens are computed on its ``before`` column.
    """
    df = unit_diff.copy()
    df["is_keytoken"] = mark_keytokens(df, keytoken_alpha=keytoken_alpha, keytoken_beta=keytoken_beta, column="before")
    rows = []
    groupings = [("keytokens", "other", "is_keytoken")]
    if "is_keyword" in df and df["is_keyword"].astype(bool).any():
        groupings.append(("keywords", "non_keywords", "is_keyword"))
    for (item_id, split), item in df.groupby(["item_id", "split"], sort=False):
        for yes, no, col in groupings:
            flag = item[col].astype(bool)
            for name, part in ((yes, item[flag]), (no, item[~flag])):
                if len(part):
                    rows.append(
                        {
                            "item_id": item_id,
                            "split": split,
                            "group": name,
                            "n_units": len(part),
                            "before": part["before"].mean(),
                            "after": part["after"].mean(),
                        }
                    )
    per_item = pd.DataFrame(rows, columns=["item_id", "split", "group", "n_units", "before", "after"])
    per_item["change"] = per_item["after"] - per_item["before"]

    def summarise(frame: pd.DataFrame) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group, g in frame.groupby("group", sort=False):
            out[group] = {
                "n_items": int(len(g)),
                "before": float(g["before"].mean()),
                "after": float(g["after"].mean()),
                "change": float(g["change"].mean()),
            }
        if "keytokens" in out and "other" in out:
            out["keytoken_minus_other_change"] = out["keytokens"]["change"] - out["other"]["change"]
        return out

    summary = summarise(per_item) | {"keytoken_alpha": keytoken_alpha, "keytoken_beta": keytoken_beta}
    summary["by_split"] = {split: summarise(g) for split, g in per_item.groupby("split", sort=True)}
    return per_item, summary
