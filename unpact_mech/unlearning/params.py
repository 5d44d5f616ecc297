"""Trainable-parameter selection by regex over the HF parameter names, snapshots and weight deltas."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


def select_trainable(model: "HookedLM", pattern: str | None, *, flag: str = "--trainable") -> list[str]:
    """Names (in ``model.named_parameters()`` order) that ``re.search(pattern, name)`` matches; None = all.

    Raises :class:`InputError` for an invalid regex or one that matches no parameter.
    """
    names = [n for n, _ in model.named_parameters()]
    if pattern is None:
        return names
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise InputError(f"{flag} {pattern!r}: not a valid regular expression ({err})") from None
    chosen = [n for n in names if regex.search(n)]
    if not chosen:
        raise InputError(
            f"{flag} {pattern!r} matches no parameter of the model (names look like {names[0]}, ..., {names[-1]})"
        )
    return chosen


@contextlib.contextmanager
def trainable_only(model: "HookedLM", names: Sequence[str]) -> Iterator[list[torch.nn.Parameter]]:
    """``requires_grad`` True exactly on ``names`` inside the context (restored after); yields those parameters."""
    wanted = set(names)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        params = []
        for n, p in model.named_parameters():
            p.requires_grad_(n in wanted)
            if n in wanted:
                params.append(p)
        yield params
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def snapshot(model: "HookedLM", names: Sequence[str]) -> dict[str, Tensor]:
    """Detached copies of the named parameters."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def current(model: "HookedLM", names: Sequence[str]) -> dict[str, Tensor]:
    """Detached views (no copy) of the named parameters."""
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in names}


def delta_norm(before: dict[str, Tensor], after: dict[str, Tensor]) -> float:
    """``‖θ_after − θ_before‖₂`` over all the given tensors (float64 accumulation)."""
    total = sum(float((after[k].double() - before[k].double()).pow(2).sum()) for k in before)
    return math.sqrt(total)


def norm(state: dict[str, Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in state.values()))


def changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> list[str]:
    """Names whose tensor differs in at least one element."""
    return [k for k in before if not torch.equal(before[k], after[k])]
