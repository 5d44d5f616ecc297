"""What to emphasise, per item — one keyword source shared by every attack, recovery and ``keyguard``.

Sources: ``attribution`` (default: the KeyTokens of word-level occlusion on the ORIGINAL model, the
``keytoken_alpha`` / ``keytoken_beta`` rule), ``data`` (the item's annotated ``keywords``), or ``both`` (union).

The KeyTokens use the paper's target, the BARE answer after the prompt (:data:`KEYWORD_TARGET`), also for chat models
whose attribution default is the answer in their own sentence: measured on SmolLM2 (28 built-in items), occlusion of
the answer in context credits mostly the restated context — its top word is an annotated keyword for 29% of the items,
against 86% for the bare answer — so it is a poor guide to which question words the answer depends on.
Words are mapped to token positions only by the one alignment (:mod:`unpact_mech.scoring.tokens`), on the original,
un-rewritten prompt; a prompt attack receives the words, an activation attack the positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unpact_mech.attribution.keytokens import DEFAULT_KEYTOKEN_ALPHA, DEFAULT_KEYTOKEN_BETA
from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.attribution.results import TokenAttribution
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.tokens import EncodedQA

KEYWORD_SOURCES = ("attribution", "data", "both")
#: The attribution target whose KeyTokens are the keywords (the paper's bare answer; see the module docstring).
KEYWORD_TARGET = "answer"


@dataclass(frozen=True)
class ItemKeywords:
    """Emphasised words of one item and their token positions in its (original) prompt."""

    item_id: str
    words: tuple[str, ...]
    positions: tuple[int, ...]
    source: str


def from_word_indices(enc: "EncodedQA", indices: Sequence[int], source: str) -> ItemKeywords:
    """Keywords from :attr:`Word.index` values (not list positions: a word that owns no token is skipped)."""
    by_index = {w.index: w for w in enc.prompt.words()}
    chosen = [by_index[i] for i in sorted(set(indices)) if i in by_index]
    positions = tuple(sorted(p for w in chosen for p in w.positions))
    return ItemKeywords(enc.item_id, tuple(w.text for w in chosen), positions, source)


def data_keywords(item: "QAItem", enc: "EncodedQA") -> ItemKeywords:
    """The item's annotated ``keywords`` (none -> an empty selection)."""
    if not item.keywords:
        return ItemKeywords(item.id, (), (), "data")
    return from_word_indices(enc, enc.prompt.keyword_words(item.keywords, item_id=item.id), "data")


def keytoken_keywords(
    model: "HookedLM",
    items: Sequence["QAItem"],
    encoded: Sequence["EncodedQA"],
    *,
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA,
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA,
    batch_size: int = 16,
) -> list[ItemKeywords]:
    """KeyTokens of word-level occlusion of the bare answer (:data:`KEYWORD_TARGET`) on ``model`` (the ORIGINAL
    model) — what :meth:`~unpact_mech.pipeline.session.Session.original_keywords` computes."""
    from unpact_mech.attribution.run import AttributionConfig, attribute_items

    cfg = AttributionConfig(
        method="occlusion", level="word", target=KEYWORD_TARGET, options={"batch_size": max(batch_size, 1)}
    )
    run = attribute_items(model, items, cfg)
    return keywords_from_attribution(encoded, run.units, keytoken_alpha=keytoken_alpha, keytoken_beta=keytoken_beta)


def keywords_from_attribution(
    encoded: Sequence["EncodedQA"],
    results: Sequence["TokenAttribution"],
    *,
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA,
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA,
) -> list[ItemKeywords]:
    """KeyTokens of word-level attributions already computed on the ORIGINAL model, one per item (e.g. the units
    of an occlusion :class:`~unpact_mech.attribution.run.AttributionRun`, computed once and reused)."""
    from unpact_mech.attribution.keytokens import keytoken_mask

    if len(encoded) != len(results):
        raise ValueError(f"{len(encoded)} encoded items but {len(results)} attributions")
    out = []
    for enc, res in zip(encoded, results):
        if any(u.word is None for u in res.units):
            raise ValueError(f"item {enc.item_id}: keywords need a word-level attribution")
        selected = keytoken_mask(res.scores, keytoken_alpha=keytoken_alpha, keytoken_beta=keytoken_beta).tolist()
        out.append(from_word_indices(enc, [u.word for u, keep in zip(res.units, selected) if keep], "attribution"))
    return out


def select_keywords(
    source: str,
    model: "HookedLM",
    items: Sequence["QAItem"],
    encoded: Sequence["EncodedQA"],
    *,
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA,
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA,
    batch_size: int = 16,
) -> list[ItemKeywords]:
    """Keywords per item from ``source`` (``attribution`` runs occlusion on ``model``, which must be the original)."""
    if source not in KEYWORD_SOURCES:
        raise InputError(f"unknown keyword source {source!r}; choose from: {', '.join(KEYWORD_SOURCES)}")
    data = [data_keywords(it, enc) for it, enc in zip(items, encoded)] if source in ("data", "both") else []
    if source == "data":
        if not any(k.words for k in data):
            raise InputError("--keywords data: no item has annotated 'keywords'")
        return data
    attr = keytoken_keywords(
        model, items, encoded, keytoken_alpha=keytoken_alpha, keytoken_beta=keytoken_beta, batch_size=batch_size
    )
    if source == "attribution":
        return attr
    return [
        ItemKeywords(
            a.item_id,
            tuple(dict.fromkeys(a.words + d.words)),
            tuple(sorted(set(a.positions) | set(d.positions))),
            "both",
        )
        for a, d in zip(attr, data)
    ]
