"""Which items belong to which split — the one helper every stage filters through.

``forget``: what unlearning removes and recovery tries to bring back; ``retain``: what retain losses may train on
(the training anchor); ``utility``: facts that must survive and that NOTHING trains on — collateral damage (utility
accuracy, the destructive rate) is measured on them. These three are the only split names a data file may use; an
item given no split is :data:`UNSPLIT` (evaluated, never trained on). Items keep the order of the data file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from unpact_mech.errors import InputError


class HasSplit(Protocol):
    """Anything with a ``split`` (a :class:`~unpact_mech.data.record.QAItem`; named structurally so that this module,
    which the record itself imports, imports nothing of it)."""

    split: str


Item = TypeVar("Item", bound=HasSplit)

FORGET = "forget"
RETAIN = "retain"
UTILITY = "utility"
SPLITS = (FORGET, RETAIN, UTILITY)
#: The split of an item given none: evaluated (accuracy per split), never trained on, not used by recovery.
UNSPLIT = "unsplit"


def split_items(items: Sequence[Item], split: str) -> list[Item]:
    """The items of ``split``, in data order."""
    return [it for it in items if it.split == split]


def require_split(items: Sequence[Item], split: str, source: str) -> list[Item]:
    """The items of ``split``; :class:`InputError` naming ``source`` (e.g. the data spec) when there are none."""
    chosen = split_items(items, split)
    if not chosen:
        raise InputError(f'{source}: no {split} items ("split": "{split}")')
    return chosen


def tuning_split(item_ids: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """``(tuning, held_out)``: a fixed seeded half of ``item_ids`` to choose hyperparameters on, and the rest to
    report on (the ids are sorted first, so the split does not depend on their order); both sorted."""
    import random

    ids = sorted(item_ids)
    random.Random(seed).shuffle(ids)
    half = (len(ids) + 1) // 2
    return sorted(ids[:half]), sorted(ids[half:])
