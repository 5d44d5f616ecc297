"""The worst-case rule on hand-built rate tables: a control is never the pick, K counts the pool, NaN rates are
skipped, ties go to the first condition in run order; two models' worst cases compared on the items eligible for
both."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from unpact_mech.recovery.worst_case import paired_worst, top_condition, worst_case_by_family


def _rates() -> pd.DataFrame:
    rows = [
        # condition, kind, family, is_control, rate, recovered, n, original_after, random_control, p_holm
        ("focus", "strategy", "instruction", False, 0.30, 8, 27, 0.81, 0.11, 0.5),
        ("neutral", "strategy", "instruction", True, 0.90, 24, 27, 1.00, None, None),
        ("quote", "strategy", "keywords_named", False, 0.30, 8, 27, 0.94, 0.10, 0.6),
        ("patch", "intervention", "patching", False, 0.15, 4, 27, None, 0.04, 1.0),
        ("quantize[int4]", "model", "quantize", False, 0.60, 16, 27, 0.88, None, None),
        ("quantize[int8]", "model", "quantize", False, float("nan"), 0, 0, 1.00, None, None),
    ]
    cols = ["condition", "kind", "family", "is_control", "recovery_rate", "recovered", "n_eligible",
            "original_accuracy_after", "random_control_rate", "p_vs_random_holm"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=cols)
    frame["ci_low"], frame["ci_high"] = frame["recovery_rate"] - 0.1, frame["recovery_rate"] + 0.1
    frame["gap_fraction"] = frame["recovery_rate"] / 2
    return frame


def test_top_condition_skips_controls_and_counts_the_pool():
    top = top_condition(_rates())
    assert top["condition"] == "quantize[int4]" and top["rate"] == 0.60 and top["recovered"] == 16
    assert top["of"] == 5  # the control `neutral` (rate 0.90) is neither picked nor counted
    assert top["original_after"] == 0.88 and top["gap_fraction"] == 0.30
    assert top["random_control"] is None and top["p_holm"] is None  # NaN cells come back as None


def test_top_condition_by_kind_ties_go_to_the_first_in_run_order():
    strategy = top_condition(_rates(), kind="strategy")
    assert strategy["condition"] == "focus" and strategy["of"] == 2  # focus and quote tie at 0.30
    assert strategy["random_control"] == 0.11 and strategy["p_holm"] == 0.5
    assert top_condition(_rates(), kind="intervention")["condition"] == "patch"


def test_top_condition_without_a_rated_condition():
    rates = _rates()
    none = top_condition(rates[rates["condition"] == "quantize[int8]"])
    assert none == {"condition": None, "of": 1}
    assert top_condition(rates, kind="readout") == {"condition": None, "of": 0}


def test_worst_case_by_family():
    worst = worst_case_by_family(_rates())
    assert list(worst) == ["instruction", "keywords_named", "patching", "quantize"]
    assert worst["instruction"]["condition"] == "focus" and worst["instruction"]["of"] == 1
    assert worst["quantize"]["condition"] == "quantize[int4]" and worst["quantize"]["of"] == 2
    assert math.isclose(worst["quantize"]["ci_high"], 0.70)


def test_paired_worst_compares_each_sides_own_pick_on_the_items_eligible_for_both():
    """Items eligible for both: a's rows {i1..i4} and b's {i2..i5} share i2, i3, i4; a's pick c1 recovers i2, i3, i4
    there (3), b's pick c2 recovers i2 only (1): the discordant pairs are (a only: i3, i4) -> McNemar p = 2 * 0.5**2
    = 0.5; restricted to ids {i3, i4, i5}: n = 2, a 2, b 0, p = 0.5 again (two discordant pairs)."""
    a = pd.DataFrame({"c1": [True, True, True, True], "c2": [False] * 4}, index=["i1", "i2", "i3", "i4"])
    b = pd.DataFrame({"c1": [False] * 4, "c2": [True, False, False, True]}, index=["i2", "i3", "i4", "i5"])
    assert paired_worst(a, b, "c1", "c2") == {"n": 3, "recovered_a": 3, "recovered_b": 1, "p": 0.5}
    assert paired_worst(a, b, "c1", "c2", ids=["i3", "i4", "i5"]) == {
        "n": 2, "recovered_a": 2, "recovered_b": 0, "p": 0.5,
    }  # fmt: skip
    out = paired_worst(a, b, "c1", "c2", ids=["i1", "i5"])  # no item eligible for both
    assert out["n"] == 0 and np.isnan(out["p"])
