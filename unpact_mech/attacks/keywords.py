"""What to emphasise, per item — one keyword source shared by every attack, recovery and ``keyguard``.

Sources: ``attribution`` (default: the KeyTokens of word-level occlusion on the ORIGINAL model, the
``keytoken_alpha`` / ``keytoken_beta`` rule), ``data`` (the item's annotated ``keywords``), or ``both`` (union).
The occlusion can come from an earlier ``unpact attribute`` run instead of being computed again
(:func:`keywords_from_run`, ``unpact recover --keywords-from RUN_DIR``).

The KeyTokens use the paper's target, the BARE answer after the prompt (:data:`KEYWORD_TARGET`), also for chat models
whose attribution default is the answer in their own sentence: measured on SmolLM2 (28 built-in items), occlusion of
the answer in context credits mostly the restated context — its top word is an annotated keyword for 29% of the items,
against 86% for the bare answer — so it is a poor guide to which question words the answer depends on.
Words are mapped to token positions only by the one alignment (:mod:`unpact_mech.scoring.tokens`), on the original,
un-rewritten prompt; a prompt attack receives the words, an activation attack the positions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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


def keywords_from_run(
    run_dir: str | os.PathLike,
    model: "HookedLM",
    items: Sequence["QAItem"],
    encoded: Sequence["EncodedQA"],
    *,
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA,
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA,
    flag: str = "--keywords-from",
) -> list[ItemKeywords]:
    """The attribution keywords of ``items`` read from an earlier ``unpact attribute`` run instead of computed: the
    KeyTokens (``keytoken_alpha`` / ``keytoken_beta`` rule) of the run's word contributions — equal to those
    :func:`keytoken_keywords` computes on ``model``.

    The run must be word-level occlusion of the bare answer (:data:`KEYWORD_TARGET`) on the weights of ``model`` (the
    ORIGINAL model; the run's ``--model``, whatever it was compared to) and hold every item with the same words at
    the same prompt positions (same question, tokenizer and prompt format). Anything else raises
    :class:`InputError` naming what differs."""
    import torch

    from unpact_mech.attribution.keytokens import keytoken_mask
    from unpact_mech.attribution.results import CONTRIBUTION
    from unpact_mech.io.results import read_results, sha256_file

    where = f"{flag} {run_dir}"
    path = Path(run_dir).expanduser()
    missing = [n for n in ("run.json", "results.csv", "summary.json") if not (path / n).is_file()]
    if missing:
        raise InputError(f"{where}: not a run directory (no {missing[0]})")
    frame, summary, run = read_results(path)
    config = run.get("config") or {}
    if run.get("command") != "attribute":
        raise InputError(f"{where}: an `unpact {run.get('command')}` run, not an `unpact attribute` run")
    kind = (config.get("method"), config.get("level"), config.get("resolved_target") or summary.get("target"))
    if kind != ("occlusion", "word", KEYWORD_TARGET):
        raise InputError(
            f"{where}: {kind[0]} at {kind[1]} level of target {kind[2]}; the keywords need word-level occlusion of "
            f"the bare answer (unpact attribute --method occlusion --level word --target {KEYWORD_TARGET})"
        )
    recorded = ((run.get("inputs") or {}).get("model") or {}).get("sha256")
    weights = sorted(Path(model.source_dir).glob("*.safetensors"))
    if not recorded or not weights:
        raise InputError(f"{where}: the run does not record its model's weights (run `unpact attribute` again)")
    if recorded != sha256_file(weights[0]):
        raise InputError(f"{where}: attributed another model than the original {model.name} (the weights differ)")
    rows = frame[(frame["metric"] == CONTRIBUTION) & (frame["model"].astype(str) == str(summary.get("model")))]
    by_item = {str(k): g.sort_values("unit") for k, g in rows.groupby("item_id", sort=False)}
    out = []
    for it, enc in zip(items, encoded):
        got = by_item.get(it.id)
        if got is None:
            raise InputError(f"{where}: the run lacks item {it.id!r} (attribute the same data)")
        words = [(w.index, w.text, w.positions[0]) for w in enc.prompt.words()]
        seen = list(zip(got["word_index"].astype(int), got["token"].astype(str), got["position"].astype(int)))
        if seen != words:
            raise InputError(
                f"{where}: item {it.id!r} was attributed with other words or positions (its question, tokenizer or "
                "prompt format differs)"
            )
        scores = torch.tensor(got["value"].to_numpy(float), dtype=torch.float32)  # the run's float32 scores, exactly
        keep = keytoken_mask(scores, keytoken_alpha=keytoken_alpha, keytoken_beta=keytoken_beta).tolist()
        out.append(from_word_indices(enc, [w for (w, _, _), k in zip(words, keep) if k], "attribution"))
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
    attribution: Sequence[ItemKeywords] | None = None,
) -> list[ItemKeywords]:
    """Keywords per item from ``source`` (``attribution`` runs occlusion on ``model``, which must be the original,
    unless ``attribution`` gives those keywords already, e.g. from :func:`keywords_from_run`)."""
    if source not in KEYWORD_SOURCES:
        raise InputError(f"unknown keyword source {source!r}; choose from: {', '.join(KEYWORD_SOURCES)}")
    data = [data_keywords(it, enc) for it, enc in zip(items, encoded)] if source in ("data", "both") else []
    if source == "data":
        if not any(k.words for k in data):
            raise InputError("--keywords data: no item has annotated 'keywords'")
        return data
    attr = (
        list(attribution)
        if attribution is not None
        else keytoken_keywords(
            model, items, encoded, keytoken_alpha=keytoken_alpha, keytoken_beta=keytoken_beta, batch_size=batch_size
        )
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
