"""Exact statistics for rates (pure functions; definitions: docs/concepts.md §13).

* every rate ``k / n`` carries its exact (Clopper–Pearson) 95% interval: the ``alpha/2`` and ``1 - alpha/2``
  quantiles of ``Beta(k, n - k + 1)`` and ``Beta(k + 1, n - k)`` (0 and 1 at k = 0 and k = n) — exact at any n,
  unlike a percentile bootstrap, which collapses to [0, 0] at 0/n;
* two conditions on the SAME items are compared by the exact McNemar test: with ``b`` items right under A only and
  ``c`` right under B only, ``p = P(|X - (b+c)/2| >= |b - (b+c)/2|)`` for ``X ~ Binomial(b + c, 1/2)`` (two-sided;
  1 when ``b + c = 0``);
* a headline that picks the best of K conditions reports Holm-adjusted p-values: sorted ascending,
  ``p'_(j) = max_{m <= j} min(1, (K - m + 1) p_(m))``;
* the destructive rate of a split: among the items the model answered before, the share it answers wrongly after;
* ``bootstrap_ci`` remains for MEAN differences (paired bootstrap over items), where no exact interval exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class Rate:
    """``value = k / n`` with its exact interval ``[low, high]``; NaN when ``n == 0``."""

    value: float
    low: float
    high: float
    k: int
    n: int

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        """``{prefix, prefix_ci_low, prefix_ci_high, prefix_k, prefix_n}``."""
        return {
            prefix: self.value,
            f"{prefix}_ci_low": self.low,
            f"{prefix}_ci_high": self.high,
            f"{prefix}_k": self.k,
            f"{prefix}_n": self.n,
        }


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` interval for a binomial proportion k / n (NaN, NaN when n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def rate(successes: np.ndarray | Sequence[bool], alpha: float = 0.05) -> Rate:
    """The proportion of True in ``successes`` with its Clopper–Pearson interval."""
    x = np.asarray(successes, dtype=bool)
    if x.size == 0:
        return Rate(float("nan"), float("nan"), float("nan"), 0, 0)
    low, high = clopper_pearson(int(x.sum()), int(x.size), alpha)
    return Rate(float(x.mean()), low, high, int(x.sum()), int(x.size))


def mcnemar_exact(a: np.ndarray | Sequence[bool], b: np.ndarray | Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of paired outcomes ``a`` and ``b`` (same items, same order); NaN if empty."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes of different lengths: {x.shape} vs {y.shape}")
    if x.size == 0:
        return float("nan")
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given; NaN entries stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out.tolist()


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (1-D; items resampled with replacement, seeded)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def destructive_rate(original_correct, unlearned_correct) -> Rate:
    """D over the items answered correctly before (``original_correct``), aligned with ``unlearned_correct``."""
    known = np.asarray(original_correct, bool)
    return rate(~np.asarray(unlearned_correct, bool)[known])
