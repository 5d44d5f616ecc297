"""The rate definitions and the exact statistics, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unpact_mech.recovery.metrics import recovery_rate
from unpact_mech.stats import bootstrap_ci, clopper_pearson, destructive_rate, holm, mcnemar_exact, rate


def test_recovery_and_destructive_rates_by_hand():
    original = [1, 1, 1, 1, 0, 1]
    unlearned = [0, 0, 0, 1, 0, 0]  # eligible: items 0, 1, 2, 5 (item 3 not forgotten, item 4 never known)
    emphasised = [1, 0, 1, 1, 1, 0]
    r = recovery_rate(original, unlearned, emphasised)
    assert (r.k, r.n, r.value) == (2, 4, 0.5)
    assert (r.low, r.high) == pytest.approx((0.0676, 0.9324), abs=1e-4)  # exact interval of 2/4
    d = destructive_rate([1, 1, 0, 1], [1, 0, 0, 0])  # known: 0, 1, 3 -> lost 1 and 3
    assert (d.k, d.n) == (2, 3) and d.value == pytest.approx(2 / 3)
    empty = recovery_rate([0, 0], [0, 0], [1, 1])
    assert empty.n == 0 and math.isnan(empty.value)


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    x = np.array([1] * 30 + [0] * 70)
    a, b = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3)
    assert a == b and a[0] < 0.3 < a[1] and a[1] - a[0] < 0.25
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    assert rate(np.array([True, False])).as_dict("r")["r_n"] == 2


def _binom_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) (upper) or P(X <= k) for X ~ Binomial(n, p), by direct summation."""
    ks = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in ks)


def test_clopper_pearson_against_hand_values():
    # 0/27: [0, 1 - 0.025^(1/27)] — does NOT collapse to [0, 0] as a percentile bootstrap does
    low, high = clopper_pearson(0, 27)
    assert (
        low == 0.0
        and high == pytest.approx(1 - 0.025 ** (1 / 27), abs=1e-9)
        and high == pytest.approx(0.1277, abs=1e-4)
    )
    # 8/27: the bounds solve P(X >= 8 | p_low) = 0.025 and P(X <= 8 | p_high) = 0.025 (R: 0.1375, 0.5018)
    low, high = clopper_pearson(8, 27)
    assert (low, high) == pytest.approx((0.1375, 0.5018), abs=1e-4)
    assert _binom_tail(8, 27, low, upper=True) == pytest.approx(0.025, abs=1e-7)
    assert _binom_tail(8, 27, high, upper=False) == pytest.approx(0.025, abs=1e-7)
    # 27/27 mirrors 0/27
    assert clopper_pearson(27, 27) == pytest.approx((0.025 ** (1 / 27), 1.0), abs=1e-9)
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    r = rate([True] * 8 + [False] * 19)
    assert (r.value, r.low, r.high, r.k, r.n) == pytest.approx((8 / 27, 0.1375, 0.5018, 8, 27), abs=1e-4)


def test_exact_mcnemar_against_hand_values():
    # discordant pairs: b = 1 item right under A only, c = 5 right under B only, 3 concordant
    a = [1, 0, 0, 0, 0, 0, 1, 1, 0]
    b = [0, 1, 1, 1, 1, 1, 1, 1, 0]
    assert mcnemar_exact(a, b) == pytest.approx(2 * (1 + 6) / 2**6)  # 2 * P(X <= 1), X ~ Bin(6, 1/2) = 0.21875
    assert mcnemar_exact(b, a) == pytest.approx(0.21875)  # symmetric
    assert mcnemar_exact([0] * 8 + [1], [1] * 9) == pytest.approx(2 / 2**8)  # b = 0, c = 8: 0.0078125
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pair
    assert math.isnan(mcnemar_exact([], []))
    with pytest.raises(ValueError, match="different lengths"):
        mcnemar_exact([1, 0], [1])


def test_holm_against_hand_values():
    # sorted 0.01, 0.03, 0.04 with K = 3: 3 x 0.01 = 0.03; max(0.03, 2 x 0.03) = 0.06; max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, 0.04, 0.03, float("nan")])[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
