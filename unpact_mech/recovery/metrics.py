"""Recovery and destructive rates (definitions: docs/concepts.md) with percentile-bootstrap confidence intervals.

* recovery rate = among forget items the ORIGINAL model answers correctly and the UNLEARNED model does not
  (the eligible set E), the fraction the unlearned model answers correctly under emphasis:
  ``R = |{i in E : emph_i}| / |E|``.
* destructive rate = among retain items the original answers correctly (set E'), the fraction the unlearned
  model gets wrong: ``D = |{i in E' : not unl_i}| / |E'|``.
* CI: resample the eligible items with replacement ``n_boot`` times (seeded); the (alpha/2, 1 - alpha/2)
  percentiles of the resampled rates. Undefined (NaN) when the eligible set is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rate:
    """``value = k / n`` with a bootstrap interval ``[lo, hi]``; NaN when ``n == 0``."""

    value: float
    lo: float
    hi: float
    k: int
    n: int

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        return {
            prefix: self.value,
            f"{prefix}_ci_lo": self.lo,
            f"{prefix}_ci_hi": self.hi,
            f"{prefix}_k": self.k,
            f"{prefix}_n": self.n,
        }


def bootstrap_ci(
    successes: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``successes`` (1-D, 0/1 or real)."""
    x = np.asarray(successes, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def rate(successes: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Rate:
    x = np.asarray(successes, dtype=bool)
    if x.size == 0:
        return Rate(float("nan"), float("nan"), float("nan"), 0, 0)
    lo, hi = bootstrap_ci(x, n_boot=n_boot, alpha=alpha, seed=seed)
    return Rate(float(x.mean()), lo, hi, int(x.sum()), int(x.size))


def eligible_for_recovery(original_correct: np.ndarray, unlearned_correct: np.ndarray) -> np.ndarray:
    """Forget items the original answers and the unlearned model does not (bool mask)."""
    return np.asarray(original_correct, bool) & ~np.asarray(unlearned_correct, bool)


def recovery_rate(original_correct, unlearned_correct, emphasised_correct, **kw) -> Rate:
    """R over the eligible forget items (all arrays aligned over the same forget items)."""
    eligible = eligible_for_recovery(original_correct, unlearned_correct)
    return rate(np.asarray(emphasised_correct, bool)[eligible], **kw)


def destructive_rate(original_correct, unlearned_correct, **kw) -> Rate:
    """D over the retain items the original answers correctly."""
    known = np.asarray(original_correct, bool)
    return rate(~np.asarray(unlearned_correct, bool)[known], **kw)
