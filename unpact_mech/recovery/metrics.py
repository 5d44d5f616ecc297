"""Recovery rates (definitions: docs/concepts.md §9): among the ELIGIBLE forget items E (original right, unlearned
wrong), the fraction answered correctly under a condition, ``R = k / n``, ``k = |{i in E : correct_i}|``,
``n = |E|``, with its exact interval (:mod:`unpact_mech.stats`, which also holds the destructive rate, the exact
McNemar test and Holm's adjustment).
"""

from __future__ import annotations

import numpy as np

from unpact_mech.stats import Rate, rate


def eligible_for_recovery(original_correct: np.ndarray, unlearned_correct: np.ndarray) -> np.ndarray:
    """Forget items the original answers and the unlearned model does not (bool mask)."""
    return np.asarray(original_correct, bool) & ~np.asarray(unlearned_correct, bool)


def recovery_rate(original_correct, unlearned_correct, emphasised_correct) -> Rate:
    """R over the eligible forget items (all arrays aligned over the same forget items)."""
    eligible = eligible_for_recovery(original_correct, unlearned_correct)
    return rate(np.asarray(emphasised_correct, bool)[eligible])
