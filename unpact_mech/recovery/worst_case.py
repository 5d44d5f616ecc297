"""The worst case of a recovery run: the condition (never a control) that brought back the most forgotten answers —
over the whole run, one kind, or one family — with the number K of conditions it is the maximum of.

A maximum over K conditions is optimistic for the attacker (the "best of K" the README's headlines name); every
caller reports K beside the pick, and the Holm-adjusted p-value where there is one. This is the one place the rule
lives: the run's ``summary.json`` (``best_condition``, ``worst_case_by_family``), the demo's headline (best prompt /
activation condition, the battery's worst case) and ``experiments/is_it_gone.py`` all call :func:`top_condition`;
:func:`paired_worst` compares two models' worst cases on the items eligible for both
(``experiments/keyword_aware_unlearning.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from unpact_mech.stats import mcnemar_exact
from unpact_mech.utils import float_or_none


def top_condition(rates: pd.DataFrame, *, kind: str | None = None, family: str | None = None) -> dict[str, Any]:
    """The non-control condition of ``rates`` (a run's ``rates.csv`` table) with the highest ``recovery_rate``, among
    those of ``kind`` and / or ``family`` when given (ties: the first in run order).

    Returns ``of`` (K: the non-control conditions in the pool, whether or not they had eligible items) and, when some
    condition has a rate, ``condition``, ``rate``, ``ci_low``, ``ci_high``, ``recovered``, ``n_eligible``,
    ``gap_fraction``, ``original_after`` (the original model's forget accuracy under the same condition),
    ``random_control`` and ``p_holm`` (its random control's rate and the Holm-adjusted McNemar p-value against it);
    ``condition`` is None when no condition has a rate (0 eligible items)."""
    pool = rates[~rates["is_control"].astype(bool)]
    if kind is not None:
        pool = pool[pool["kind"] == kind]
    if family is not None:
        pool = pool[pool["family"] == family]
    out: dict[str, Any] = {"condition": None, "of": int(len(pool))}
    valid = pool.dropna(subset=["recovery_rate"])
    if not len(valid):
        return out
    best = valid.loc[valid["recovery_rate"].idxmax()]
    get = best.get
    return out | {
        "condition": str(best["condition"]), "rate": float(best["recovery_rate"]),
        "ci_low": float_or_none(get("ci_low")), "ci_high": float_or_none(get("ci_high")),
        "recovered": int(best["recovered"]), "n_eligible": int(best["n_eligible"]),
        "gap_fraction": float_or_none(get("gap_fraction")),
        "original_after": float_or_none(get("original_accuracy_after")),
        "random_control": float_or_none(get("random_control_rate")), "p_holm": float_or_none(get("p_vs_random_holm")),
    }  # fmt: skip


def worst_case_by_family(rates: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """:func:`top_condition` per attack family that has a rated non-control condition (family -> its pick, with
    ``of`` = the conditions of that family)."""
    out: dict[str, dict[str, Any]] = {}
    for family in rates.loc[~rates["is_control"].astype(bool), "family"].drop_duplicates():
        pick = top_condition(rates, family=family)
        if pick["condition"] is not None:
            out[str(family)] = pick
    return out


def paired_worst(
    a: pd.DataFrame, b: pd.DataFrame, condition_a: str, condition_b: str, ids: Sequence[str] | None = None
) -> dict[str, Any]:
    """Two unlearned models' worst cases compared on the same items: on the items eligible for BOTH (rows of both
    ``a`` and ``b``; among ``ids`` when given) each item's outcome under its own model's worst condition
    (``condition_a`` in ``a``, ``condition_b`` in ``b``: each picked by :func:`top_condition`'s rule, a best-of-K
    chosen the same way for both), and the two-sided exact McNemar p-value of those paired outcomes.

    ``a``, ``b``: eligible items x conditions, bool (:func:`unpact_mech.recovery.compare.recovered`). Returns ``n``
    (items eligible for both), ``recovered_a`` / ``recovered_b`` (over those n) and ``p`` (NaN when n = 0)."""
    keep = set(b.index) & (set(a.index) if ids is None else set(a.index) & set(ids))
    common = [i for i in a.index if i in keep]
    x = a.loc[common, condition_a].to_numpy(bool)
    y = b.loc[common, condition_b].to_numpy(bool)
    return {"n": len(common), "recovered_a": int(x.sum()), "recovered_b": int(y.sum()), "p": mcnemar_exact(x, y)}
