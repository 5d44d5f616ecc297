"""Two recovery runs on the same items, compared pairwise (e.g. keyguard against RMU under the same suite).

Each run's ``per_item`` table (``recovery/<method>/per_item.csv``) says which forget items are ELIGIBLE (the original
right, the unlearned model wrong, in the baseline rows ``condition == "none"``) and, per condition, whether the
emphasised question was answered correctly. Two runs with different unlearned models have different eligible sets;
a paired comparison uses the items eligible in BOTH, so each item is its own control.
"""

from __future__ import annotations

import pandas as pd

from unpact_mech.recovery.metrics import eligible_for_recovery
from unpact_mech.stats import mcnemar_exact

ANY = "any condition"
PAIRED_COLUMNS = ("condition", "n", "recovered_a", "recovered_b", "rate_a", "rate_b", "p_mcnemar")


def eligible_ids(per_item: pd.DataFrame) -> list[str]:
    """Forget items the original answers and the unlearned model does not (the baseline rows), in table order."""
    base = per_item[(per_item["condition"] == "none") & (per_item["split"] == "forget")]
    orig = base[base["model"] == "original"].set_index("item_id")["correct"]
    unl = base[base["model"] == "unlearned"].set_index("item_id")["correct"]
    mask = eligible_for_recovery(orig.reindex(unl.index, fill_value=0).to_numpy(), unl.to_numpy())
    return list(unl.index[mask])


def recovered(per_item: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Items ``ids`` x conditions: 1 where the unlearned model answers the keyword-emphasised condition correctly."""
    arm = per_item[
        (per_item["model"] == "unlearned")
        & (per_item["split"] == "forget")
        & (per_item["emphasis"] == "keywords")
        & (per_item["condition"] != "none")
    ]
    wide = arm.pivot_table(index="item_id", columns="condition", values="correct", aggfunc="max", sort=False)
    return wide.reindex(ids).fillna(0).astype(bool)


def paired_recovery(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per condition of both runs (in ``a``'s order), then ``any condition`` (an item recovered by at least one):
    ``n`` = items eligible in both, ``recovered_a`` / ``recovered_b`` and their rates over those ``n`` items, and the
    two-sided exact McNemar p-value of the paired outcomes (not corrected for the number of conditions)."""
    ids = [i for i in eligible_ids(a) if i in set(eligible_ids(b))]
    ra, rb = recovered(a, ids), recovered(b, ids)
    conditions = [c for c in ra.columns if c in rb.columns]
    rows = []
    for name, x, y in [(c, ra[c], rb[c]) for c in conditions] + [(ANY, ra.any(axis=1), rb.any(axis=1))]:
        n = len(ids)
        rows.append({
            "condition": name, "n": n, "recovered_a": int(x.sum()), "recovered_b": int(y.sum()),
            "rate_a": x.sum() / n if n else float("nan"), "rate_b": y.sum() / n if n else float("nan"),
            "p_mcnemar": mcnemar_exact(x.to_numpy(), y.to_numpy()),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
