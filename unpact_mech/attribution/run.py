"""Run one attribution method over many items: long tables, KeyTokens, keyword agreement, summary.

:func:`attribute_items` is what ``unpact attribute`` calls and what experiment scripts use for a whole data
set; :func:`compare_runs` gives the before/after comparison of two runs on the same items (e.g. the original
and the unlearned model). The method is an object of the registry (:mod:`unpact_mech.attribution.methods`) built
from :class:`AttributionConfig`; it wraps a per-item function of its own module (``occlusion``, ``gradients``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from unpact_mech.attribution.compare import compare_heads, compare_layers, compare_units, keytoken_change
from unpact_mech.attribution.keytokens import (
    DEFAULT_KEYTOKEN_ALPHA,
    DEFAULT_KEYTOKEN_BETA,
    agreement_summary,
    check_keytoken_rule,
    keytoken_mask,
    keyword_agreement,
)
from unpact_mech.attribution.methods import AttributionMethod, get_attribution_method
from unpact_mech.attribution.results import CONTRIBUTION, TokenAttribution
from unpact_mech.attribution.targets import get_target
from unpact_mech.attribution.units import PreparedItem, check_level, prepare_item
from unpact_mech.data.splits import SPLITS
from unpact_mech.distributed import map_items, process_rank_and_count, shard_positions
from unpact_mech.errors import InputError
from unpact_mech.scoring.own_answer import OwnAnswer
from unpact_mech.utils import progress_bar

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

#: Identifying columns kept as (nullable) integers / booleans in the long frame.
INT_COLUMNS = ("unit", "position", "n_tokens", "word_index", "layer", "head")
BOOL_COLUMNS = ("is_keyword", "is_keytoken")
#: Items handed to one :meth:`AttributionMethod.attribute_many` call (methods that batch items, like occlusion, share
#: forwards within a call; the progress bar moves per call).
ITEMS_PER_CALL = 32


@dataclass
class AttributionConfig:
    """Everything that decides the numbers of a run (recorded in ``run.json``; JSON-serialisable by ``asdict``).

    ``method``: a registered method (:data:`~unpact_mech.attribution.methods.ATTRIBUTION_METHODS`); ``options``:
    its own options by name (e.g. ``{"batching": "packed", "batch_size": 64}`` for occlusion; the others keep the
    method's defaults); ``keytoken_alpha`` / ``keytoken_beta``: the KeyTokens rule (:mod:`.keytokens`); ``target``:
    what is attributed (:mod:`.targets`; ``auto`` = ``answer_in_context`` for chat-format prompts, else ``answer``).
    """

    method: str = "occlusion"
    level: str = "token"
    target: str = "auto"
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA
    options: dict[str, Any] = field(default_factory=dict)

    def method_object(self) -> AttributionMethod:
        """The registered method built with :attr:`options` (validated: raises :class:`InputError`)."""
        return get_attribution_method(self.method, **self.options)

    def validate(self) -> None:
        """Model-independent checks (raise :class:`InputError`); call before loading anything."""
        check_level(self.level)
        get_target(self.target)
        check_keytoken_rule(self.keytoken_alpha, self.keytoken_beta)
        self.method_object()

    def validate_for(self, model: "HookedLM") -> None:
        """Model-dependent checks of the method's options (hook names, layer range, baseline token)."""
        self.method_object().validate_for(model)


@dataclass
class AttributionRun:
    """Result of :func:`attribute_items`: per-item result objects, the long ``frame`` (with ``model``), the
    token/word view ``units`` (one :class:`TokenAttribution` per item; empty when the method has no token view,
    e.g. ``residual``), the summary, and the methods' extra per-item results (e.g. gradient x activation)."""

    model: str
    config: AttributionConfig
    results: list[Any]
    units: list[TokenAttribution]
    frame: pd.DataFrame
    summary: dict[str, Any]
    extras: list[Any] = field(default_factory=list)
    own_answers: dict[str, OwnAnswer | None] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """The resolved target name (``auto`` resolved for the model the run attributed)."""
        return str(self.summary.get("target", self.config.target))

    def unit_frame(self) -> pd.DataFrame:
        """Rows of the unit contributions only (``metric == "contribution"``)."""
        return self.frame[self.frame["metric"] == CONTRIBUTION]


def prepare_items(
    model: "HookedLM", items: Sequence["QAItem"], own: Mapping[str, OwnAnswer | None] | None = None
) -> list[PreparedItem]:
    """Encode every item first, so bad items (empty answer tokens, too long) fail before any work; ``own``: the
    own answer sentence per item id for the ``answer_in_context`` target."""
    own = own or {}
    return [prepare_item(model, it, own.get(getattr(it, "id", None) or getattr(it, "item_id", ""))) for it in items]


def own_answers_of(
    model: "HookedLM", items: Sequence["QAItem"] | Sequence[PreparedItem], batch_size: int = 16, *, shard: bool = False
) -> dict[str, OwnAnswer | None]:
    """``model``'s own answer sentence per item id (:func:`~unpact_mech.scoring.own_answer.own_answers`; items
    already carrying one keep it). ``shard``: each process of a launch generates its share (:func:`attribute_items`)."""
    from unpact_mech.data.record import QAItem
    from unpact_mech.scoring.own_answer import own_answers
    from unpact_mech.scoring.tokens import encode_item

    out = {it.item_id: it.own for it in items if isinstance(it, PreparedItem) and it.own is not None}
    todo = [it for it in items if isinstance(it, QAItem) and it.id not in out]

    def answer(share: list["QAItem"]) -> list[OwnAnswer | None]:
        return own_answers(model, share, [encode_item(model, it) for it in share], batch_size=batch_size)

    found = map_items(answer, todo) if shard else answer(todo)
    return out | {it.id: own for it, own in zip(todo, found)}


def attribute_items(
    model: "HookedLM",
    items: Sequence["QAItem"] | Sequence[PreparedItem],
    config: AttributionConfig | None = None,
    *,
    label: str | None = None,
    progress: bool = False,
    own_answers: Mapping[str, OwnAnswer | None] | None = None,
    shard: bool = False,
) -> AttributionRun:
    """Attribute every item with ``config.method``; returns an :class:`AttributionRun`.

    Per item: the method's result, its token view (if any) with KeyTokens by the α/β rule, and its extra results.
    The long frame holds every method's rows (see :mod:`unpact_mech.attribution.results`) plus ``model`` (=
    ``label`` or the model's name) and, on unit rows, ``is_keytoken``.

    ``own_answers``: for the ``answer_in_context`` target, the ORIGINAL model's own answer sentence per item id —
    pass the original run's :attr:`AttributionRun.own_answers` when attributing the unlearned model, so both score the
    same tokens; default: computed on ``model`` (right for the original).

    ``shard``: under a multi-process ``accelerate launch`` (every process attributing the same items), each process
    computes the method's results, extra results and own answers of its share of the items and all get every one
    (:mod:`unpact_mech.distributed`); tables and summary are then built from all items, as one process builds them.
    No effect on one process.
    """
    cfg = config or AttributionConfig()
    cfg.validate()
    cfg.validate_for(model)
    method = cfg.method_object()
    tgt = get_target(cfg.target, model)
    own = (
        dict(own_answers)
        if own_answers is not None
        else own_answers_of(model, items, shard=shard)
        if tgt.in_context
        else {}
    )
    prepared = prepare_items(model, items, own)
    if tgt.in_context:  # no own answer (the sentence lacks the gold answer): the bare answer, said explicitly
        prepared = [p if p.own is not None else replace(p, own=OwnAnswer((), p.encoded.answer_ids)) for p in prepared]
    units, extras, frames = [], [], []
    rank, world = process_rank_and_count() if shard else (0, 1)
    bar = progress_bar(
        total=len(shard_positions(len(prepared), rank, world)), enabled=progress and rank == 0,
        desc=f"{cfg.method} ({label or model.name})", leave=False,
    )  # fmt: skip

    def attribute(share: list[PreparedItem]) -> list[tuple[Any, list[Any]]]:
        """The method's result and extra results per item of ``share`` (the work a launch splits)."""
        results = []
        for start in range(0, len(share), ITEMS_PER_CALL):
            chunk = share[start : start + ITEMS_PER_CALL]
            results += method.attribute_many(model, chunk, level=cfg.level, target=tgt.name)
            bar.update(len(chunk))
        return [(res, list(method.extra_results(model, p, target=tgt.name))) for p, res in zip(share, results)]

    done = map_items(attribute, prepared) if shard else attribute(prepared)
    bar.close()
    results = [res for res, _ in done]
    for p, (res, extra_results) in zip(prepared, done):
        view = method.token_view(res, p, level=cfg.level)
        keytokens = None if view is None else keytoken_mask(view.scores, cfg.keytoken_alpha, cfg.keytoken_beta)
        frames += method.frames(res, view, keytokens)
        if view is not None:
            units.append(view)
        for extra in extra_results:
            extras.append(extra)
            frames.append(extra.to_frame())
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["item_id", "split", "metric", "value"])
    )
    frame.insert(2, "model", label or model.name)
    frame = frame.astype({c: "Int64" for c in INT_COLUMNS if c in frame.columns})
    frame = frame.astype({c: "boolean" for c in BOOL_COLUMNS if c in frame.columns})
    summary = summarize_attribution(method, results, units, replace(cfg, target=tgt.name))
    if tgt.in_context:
        fallback = sum(own.get(p.item_id) is None for p in prepared)
        summary["n_in_context"], summary["n_bare_fallback"] = len(prepared) - fallback, fallback
    return AttributionRun(label or model.name, cfg, results, units, frame, summary, extras, own)


def summarize_attribution(
    method: AttributionMethod, results: Sequence[Any], units: Sequence[TokenAttribution], cfg: AttributionConfig
) -> dict[str, Any]:
    """Headline numbers: keyword agreement (``keyword_hit_rate``: share of items whose top-scoring word is one of
    their annotated keywords; None without keywords or token view), mean target, then the method's own entries
    (:meth:`AttributionMethod.summarize`, e.g. IG's completeness)."""
    agreements = [
        keyword_agreement(u.scores, keytoken_mask(u.scores, cfg.keytoken_alpha, cfg.keytoken_beta), u.is_keyword)
        for u in units
    ]
    summary: dict[str, Any] = {
        "n_items": len(results),
        "method": cfg.method,
        "target": cfg.target,
        "level": cfg.level,
        "keytoken_alpha": cfg.keytoken_alpha,
        "keytoken_beta": cfg.keytoken_beta,
        "mean_target_value": float(torch.tensor([r.target_value for r in results]).mean()) if results else None,
    }
    summary |= agreement_summary(agreements) if units else {"keyword_hit_rate": None}
    if units:  # forget, retain and utility items apart: they answer different questions
        splits = sorted({u.split for u in units}, key=lambda x: (SPLITS.index(x) if x in SPLITS else len(SPLITS), x))
        summary["keyword_hit_rate_by_split"] = {
            split: agreement_summary([a for a, u in zip(agreements, units) if u.split == split])["keyword_hit_rate"]
            for split in splits
        }
    return summary | method.summarize(results, target=cfg.target)


@dataclass
class Comparison:
    """Before/after tables (long) and the KeyToken summary of two runs on the same items."""

    units: pd.DataFrame
    keytokens: pd.DataFrame
    heads: pd.DataFrame
    layers: pd.DataFrame
    summary: dict[str, Any]

    def frame(self) -> pd.DataFrame:
        """All diff tables stacked (long: keys, metric, before, after, diff)."""
        parts = [
            df.assign(view=name)
            for name, df in (("unit", self.units), ("head", self.heads), ("layer", self.layers))
            if len(df)
        ]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def compare_runs(before: AttributionRun, after: AttributionRun) -> Comparison:
    """Diff two runs (same method, same items): per unit (methods with a token view), per head (methods with a
    head view), per layer (methods with a layer view); KeyToken change summary (α/β of ``before``)."""
    if before.config.method != after.config.method:
        raise InputError(f"cannot compare a {before.config.method} run with a {after.config.method} run")
    if before.target != after.target:
        raise InputError(f"cannot compare a run of target {before.target} with one of target {after.target}")
    if before.own_answers != after.own_answers:
        raise InputError(
            "the two runs scored different own-answer contexts: attribute the second with "
            "own_answers=<first run>.own_answers"
        )
    method = before.config.method_object()
    b, a = (
        before.frame.drop(columns=["model", "is_keytoken"], errors="ignore"),
        after.frame.drop(columns=["model", "is_keytoken"], errors="ignore"),
    )
    units = compare_units(b, a) if before.units else pd.DataFrame()
    per_item, kt = (
        keytoken_change(units, keytoken_alpha=before.config.keytoken_alpha, keytoken_beta=before.config.keytoken_beta)
        if len(units)
        else (pd.DataFrame(), {})
    )
    heads = compare_heads(b, a) if method.head_view else pd.DataFrame()
    layers = compare_layers(b, a) if method.layer_view else pd.DataFrame()
    summary = {"before": before.model, "after": after.model, "keytoken_change": kt}
    if len(heads):
        by_head = heads.groupby(["layer", "head"])["diff"].mean()
        summary["largest_head_drop"] = {
            "layer": int(by_head.idxmin()[0]),
            "head": int(by_head.idxmin()[1]),
            "mean_diff": float(by_head.min()),
        }
    if len(layers):
        dla = layers[layers.metric == "direct_logit"].groupby(["layer", "component"])["diff"].mean()
        summary["largest_component_drop"] = {
            "layer": int(dla.idxmin()[0]),
            "component": str(dla.idxmin()[1]),
            "mean_diff": float(dla.min()),
        }
    return Comparison(units, per_item, heads, layers, summary)
