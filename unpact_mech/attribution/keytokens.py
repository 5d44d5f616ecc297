"""KeyTokens (the paper's alpha/beta rule) and their agreement with annotated keywords. Pure functions.

KeyTokens of an attribution ``C`` (U,) over units (tokens or words), with ``α = keytoken_alpha`` and
``β = keytoken_beta``:

1. only positive contributions count: ``P = {u : C_u > 0}``;
2. if ``|P| < β``: every unit of P is a KeyToken;
3. otherwise normalise by the largest, ``C_u / max_P C``, and keep the units with normalised score ``>= α``
   (``>=`` so that ``α = 1`` keeps the maximum).

α in (0, 1] and β >= 1 are not given by the paper: the defaults :data:`DEFAULT_KEYTOKEN_ALPHA` = 0.5 and
:data:`DEFAULT_KEYTOKEN_BETA` = 3 (the only ones: every caller imports them) are settable everywhere.

Agreement with the item's annotated keywords (sets of units): ``hit`` = the top-scoring unit is a keyword;
``precision`` = |KeyTokens ∩ keywords| / |KeyTokens|; ``recall`` = |KeyTokens ∩ keywords| / |keywords|
(NaN when the denominator is empty). :func:`agreement_summary` averages them over the items that have
keywords (macro average; precision over items with at least one KeyToken).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unpact_mech.errors import InputError

#: α: KeyTokens are the positive units with ``C_u / max C >= α``.
DEFAULT_KEYTOKEN_ALPHA = 0.5
#: β: with fewer than β positive units, all of them are KeyTokens.
DEFAULT_KEYTOKEN_BETA = 3


def check_keytoken_rule(keytoken_alpha: float, keytoken_beta: int) -> None:
    """Raise :class:`InputError` unless ``0 < keytoken_alpha <= 1`` and ``keytoken_beta >= 1`` (an integer)."""
    if not (isinstance(keytoken_alpha, (int, float)) and 0 < keytoken_alpha <= 1):
        raise InputError(f"keytoken_alpha must be in (0, 1], got {keytoken_alpha}")
    if not (isinstance(keytoken_beta, int) and keytoken_beta >= 1):
        raise InputError(f"keytoken_beta must be an integer >= 1, got {keytoken_beta}")


def keytoken_mask(
    scores: Tensor, keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA, keytoken_beta: int = DEFAULT_KEYTOKEN_BETA
) -> Tensor:
    """The α/β rule: ``scores`` (U,) -> (U,) bool, True for KeyTokens (module docstring)."""
    check_keytoken_rule(keytoken_alpha, keytoken_beta)
    positive = scores > 0
    if int(positive.sum()) < keytoken_beta:
        return positive
    normalised = torch.where(positive, scores / scores[positive].max(), torch.zeros_like(scores))
    return positive & (normalised >= keytoken_alpha)


@dataclass(frozen=True)
class Agreement:
    """Agreement of one item's attribution with its annotated keywords."""

    hit: bool
    precision: float
    recall: float
    n_keytokens: int
    n_keywords: int


def keyword_agreement(scores: Tensor, selected: Tensor, is_keyword: Sequence[bool]) -> Agreement:
    """``scores`` (U,), KeyToken mask ``selected`` (U,) and per-unit keyword flags -> :class:`Agreement`.

    The top unit is the first maximum of ``scores``; ``hit`` is False when there are no units.
    """
    kw = torch.tensor(list(is_keyword), dtype=torch.bool) if len(is_keyword) else torch.zeros(0, dtype=torch.bool)
    n_sel, n_kw = int(selected.sum()), int(kw.sum())
    both = int((selected & kw).sum()) if len(kw) else 0
    hit = bool(kw[int(torch.argmax(scores))]) if len(scores) and len(kw) else False
    return Agreement(
        hit=hit,
        precision=both / n_sel if n_sel else math.nan,
        recall=both / n_kw if n_kw else math.nan,
        n_keytokens=n_sel,
        n_keywords=n_kw,
    )


def _mean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def agreement_summary(agreements: Sequence[Agreement]) -> dict[str, float | int | None]:
    """``keyword_hit_rate`` (share of items whose top unit is a keyword), ``keyword_precision`` and
    ``keyword_recall`` (macro means) over the items with at least one keyword; None when there are none."""
    with_kw = [a for a in agreements if a.n_keywords > 0]
    return {
        "keyword_hit_rate": _mean(float(a.hit) for a in with_kw),
        "keyword_precision": _mean(a.precision for a in with_kw),
        "keyword_recall": _mean(a.recall for a in with_kw),
        "n_items_with_keywords": len(with_kw),
        "mean_keytokens_per_item": _mean(float(a.n_keytokens) for a in agreements),
    }
