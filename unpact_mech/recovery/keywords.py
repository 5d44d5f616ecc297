"""Which words/tokens to emphasise, per item — one keyword source shared by prompt and activation emphasis.

Sources: ``attribution`` (default: KeyTokens of word-level occlusion on the ORIGINAL model, alpha/beta rule),
``data`` (the item's annotated ``keywords``), or ``both`` (union). Words are mapped to token positions only by
the foundation's alignment (:mod:`unpact_mech.scoring.tokens`), on the original, un-rewritten prompt.

Controls: :func:`random_words` draws, per item, the same number of non-keyword words of the question (seeded).
:func:`position_groups` gives the position sets of the layer ablation: keywords, non-keywords, last token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from unpact_mech.errors import InputError
from unpact_mech.scoring.tokens import EncodedQA, WORD_RE

if TYPE_CHECKING:
    from unpact_mech.attribution.results import TokenAttribution
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

SOURCES = ("attribution", "data", "both")


@dataclass(frozen=True)
class ItemKeywords:
    """Emphasised words of one item and their token positions in its (original) prompt."""

    item_id: str
    words: tuple[str, ...]
    positions: tuple[int, ...]
    source: str


def _is_word(text: str) -> bool:
    return bool(WORD_RE.fullmatch(text)) and any(ch.isalnum() for ch in text)


def from_word_indices(enc: EncodedQA, indices: Sequence[int], source: str) -> ItemKeywords:
    """Keywords from :attr:`Word.index` values (not list positions: a word that owns no token is skipped)."""
    by_index = {w.index: w for w in enc.prompt.words()}
    chosen = [by_index[i] for i in sorted(set(indices)) if i in by_index]
    return ItemKeywords(enc.item_id, tuple(w.text for w in chosen), tuple(sorted(p for w in chosen for p in w.positions)), source)


def data_keywords(item: "QAItem", enc: EncodedQA) -> ItemKeywords:
    return from_word_indices(enc, enc.prompt.keyword_words(item.keywords, item_id=item.id), "data") if item.keywords else ItemKeywords(item.id, (), (), "data")


def keytoken_keywords(
    model: "HookedLM", encoded: Sequence[EncodedQA], *, alpha: float = 0.5, beta: int = 3, batch_size: int = 16,
    progress: bool = False,
) -> list[ItemKeywords]:
    """KeyTokens (word level) of the occlusion attribution on ``model`` (the ORIGINAL model)."""
    from unpact_mech.attribution.occlusion import occlusion

    results = [occlusion(model, enc, level="word", batch_size=batch_size) for enc in encoded]
    return keywords_from_attribution(encoded, results, alpha=alpha, beta=beta)


def keywords_from_attribution(
    encoded: Sequence[EncodedQA], results: Sequence["TokenAttribution"], *, alpha: float = 0.5, beta: int = 3,
) -> list[ItemKeywords]:
    """KeyTokens (alpha/beta rule) of word-level attributions already computed on the ORIGINAL model, one per item
    (e.g. the units of an occlusion :class:`~unpact_mech.attribution.run.AttributionRun`, reused by the demo)."""
    from unpact_mech.attribution.keytokens import keytoken_mask

    if len(encoded) != len(results):
        raise ValueError(f"{len(encoded)} encoded items but {len(results)} attributions")
    out = []
    for enc, res in zip(encoded, results):
        if any(u.word is None for u in res.units):
            raise ValueError(f"item {enc.item_id}: keywords need a word-level attribution")
        selected = keytoken_mask(res.scores, alpha=alpha, beta=beta)
        out.append(from_word_indices(enc, [u.word for u, keep in zip(res.units, selected.tolist()) if keep], "attribution"))
    return out


def select_keywords(
    source: str, model: "HookedLM", items: Sequence["QAItem"], encoded: Sequence[EncodedQA], *,
    alpha: float = 0.5, beta: int = 3, batch_size: int = 16, progress: bool = False,
) -> list[ItemKeywords]:
    """Keywords per item from ``source`` (``attribution`` uses ``model``, which must be the original)."""
    if source not in SOURCES:
        raise InputError(f"unknown keyword source {source!r}; choose from: {', '.join(SOURCES)}")
    data = [data_keywords(it, enc) for it, enc in zip(items, encoded)] if source in ("data", "both") else None
    if source == "data":
        if not any(k.words for k in data):
            raise InputError("--keywords data: no item has annotated 'keywords'")
        return data
    attr = keytoken_keywords(model, encoded, alpha=alpha, beta=beta, batch_size=batch_size, progress=progress)
    if source == "attribution":
        return attr
    return [
        ItemKeywords(a.item_id, tuple(dict.fromkeys(a.words + d.words)), tuple(sorted(set(a.positions) | set(d.positions))), "both")
        for a, d in zip(attr, data)
    ]


def random_words(enc: EncodedQA, keywords: ItemKeywords, rng: random.Random) -> ItemKeywords:
    """Control: as many non-keyword words of the question as there are keywords, drawn at random."""
    taken = set(keywords.positions)
    pool = [w.index for w in enc.prompt.words() if _is_word(w.text) and not taken.intersection(w.positions)]
    n = min(len(keywords.words), len(pool))
    return from_word_indices(enc, sorted(rng.sample(pool, n)), "random")


def position_groups(enc: EncodedQA, keywords: ItemKeywords) -> dict[str, tuple[int, ...]]:
    """Position sets for the layer ablation: ``keywords``, ``non_keywords`` (other question tokens), ``last_token``."""
    kw = set(keywords.positions)
    return {
        "keywords": tuple(sorted(kw)),
        "non_keywords": tuple(p for p in enc.prompt.question_positions if p not in kw),
        "last_token": (len(enc.prompt) - 1,),
    }
