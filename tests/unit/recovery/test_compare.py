"""Paired comparison of two recovery runs: eligible items in both, per-condition counts, exact McNemar p-values."""

from __future__ import annotations

import pandas as pd
import pytest

from unpact_mech.recovery.compare import ANY, eligible_ids, paired_recovery


def per_item(unlearned_wrong: list[str], recovered: dict[str, list[str]], items=("a", "b", "c", "d", "e")):
    rows = []
    for i in items:
        rows.append({"item_id": i, "split": "forget", "model": "original", "condition": "none", "emphasis": "none",
                     "correct": 1.0})  # fmt: skip
        rows.append({"item_id": i, "split": "forget", "model": "unlearned", "condition": "none", "emphasis": "none",
                     "correct": 0.0 if i in unlearned_wrong else 1.0})  # fmt: skip
    for cond, ids in recovered.items():
        for i in unlearned_wrong:
            rows.append({"item_id": i, "split": "forget", "model": "unlearned", "condition": cond,
                         "emphasis": "keywords", "correct": float(i in ids)})  # fmt: skip
            rows.append({"item_id": i, "split": "forget", "model": "unlearned", "condition": cond,
                         "emphasis": "random", "correct": 1.0})  # the random control never counts  # fmt: skip
    return pd.DataFrame(rows)


def test_paired_recovery_on_the_items_eligible_in_both():
    a = per_item(["a", "b", "c", "d"], {"focus": ["a", "b", "c"], "patch": ["d"]})
    b = per_item(["b", "c", "d", "e"], {"focus": [], "patch": ["b"]})
    assert eligible_ids(a) == ["a", "b", "c", "d"]
    out = paired_recovery(a, b).set_index("condition")
    assert list(out.index) == ["focus", "patch", ANY]
    assert (out["n"] == 3).all()  # b, c, d
    focus = out.loc["focus"]
    assert (focus["recovered_a"], focus["recovered_b"]) == (2, 0)  # b, c vs none: 2 discordant pairs one way
    assert focus["p_mcnemar"] == pytest.approx(0.5)  # 2 * 0.5**2
    patch = out.loc["patch"]
    assert (patch["recovered_a"], patch["recovered_b"], patch["p_mcnemar"]) == (1, 1, 1.0)  # d vs b: 1 + 1 discordant
    anyc = out.loc[ANY]
    assert (anyc["recovered_a"], anyc["recovered_b"]) == (3, 1) and anyc["rate_a"] == pytest.approx(1.0)
    assert anyc["p_mcnemar"] == pytest.approx(0.5)  # b recovered by both; c, d by a only
