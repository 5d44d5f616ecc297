"""Checks every study runs before loading or writing anything (one-line :class:`InputError`, exit 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from unpact_mech.errors import InputError


def check_methods(methods: Sequence[str], flag: str = "--methods") -> None:
    """Every name is a registered unlearning method, none twice, at least one."""
    from unpact_mech.unlearning import UNLEARNING_METHODS

    if not methods:
        raise InputError(f"{flag}: give at least one unlearning method")
    for name in methods:
        if name not in UNLEARNING_METHODS:
            raise InputError(
                f"{flag}: unknown unlearning method {name!r}; choose from: {', '.join(UNLEARNING_METHODS)}"
            )
    if len(set(methods)) != len(methods):
        raise InputError(f"{flag}: a method is listed twice")


def check_training(steps: int | None, lr: float | None) -> None:
    """Overrides of the recipes: steps an integer >= 1, lr a finite number > 0 (None: the recipe's)."""
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be an integer >= 1, got {steps}")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"--lr must be a finite number > 0, got {lr}")
