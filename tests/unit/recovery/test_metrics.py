"""The rate definitions, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unpact_mech.recovery.metrics import bootstrap_ci, destructive_rate, rate, recovery_rate


def test_recovery_and_destructive_rates_by_hand():
    original = [1, 1, 1, 1, 0, 1]
    unlearned = [0, 0, 0, 1, 0, 0]  # eligible: items 0, 1, 2, 5 (item 3 not forgotten, item 4 never known)
    emphasised = [1, 0, 1, 1, 1, 0]
    r = recovery_rate(original, unlearned, emphasised, n_boot=500)
    assert (r.k, r.n, r.value) == (2, 4, 0.5)
    assert 0.0 <= r.lo <= 0.5 <= r.hi <= 1.0
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
