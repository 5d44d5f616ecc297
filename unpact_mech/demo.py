"""``unpact demo``: the whole unPact question on one model, in one command, into one run directory.

A sequence of the shared pipeline stages (:mod:`unpact_mech.pipeline`):

1. ``evaluate/`` — greedy answers of every item on the original model (accuracy per split);
2. attribution on the ORIGINAL model: word-level occlusion (the paper's score) of every item — its KeyTokens are
   the recovery keywords — and residual-stream / attention-path attribution of the first ``layer_items`` forget items;
3. per unlearning method, on a fresh copy of the model (the original stays loaded and untouched):
   ``unlearned/<method>/`` (a loadable model directory with dynamics), ``attribution/<method>/{occlusion,residual,
   attention}/`` (original vs unlearned, KeyToken shift), ``recovery/<method>/`` (prompt strategies and activation
   interventions at the keywords, with random-word, original-model and utility controls, exact intervals);
   ``battery/<method>/`` ("is it really gone?": a fast subset of the battery — quantization, relearning, logit lens,
   direction ablation, few-shot, rephrasing — with the same controls; its worst case goes into the headline);
4. top level: ``summary.json`` (``methods``: one headline row per method), ``results.csv`` (long), ``run.json``
   (config, seed, versions, the lineage of every unlearned model) and ``report.html``.

The directory is built in a temporary sibling and renamed into place at the end: an interrupted demo leaves no
half-written run, and an earlier run directory is never overwritten (the default ``--out`` carries a time stamp).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.data.splits import SPLITS
from unpact_mech.pipeline.presets import (
    DEFAULT_METHODS,
    DEMO_INTERVENTIONS,
    DEMO_STRATEGIES,
    MAX_CONTROL_ITEMS,
    default_data,
    train_overrides,
)
from unpact_mech.recovery.worst_case import top_condition
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS


@dataclass
class DemoConfig:
    """Everything that decides the demo's numbers (recorded in ``run.json``)."""

    model: str = "smollm2"
    methods: Sequence[str] = DEFAULT_METHODS
    data: str | None = None  # default: the model's data set (presets.MODEL_DEFAULTS)
    backend: str = "transformer_lens"
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    steps: int | None = None  # None: the method's recipe (or the model's override)
    lr: float | None = None
    strategies: Sequence[str] = DEMO_STRATEGIES
    interventions: Sequence[str] = DEMO_INTERVENTIONS
    #: The "is it gone?" conditions (None: the model's fast subset, ``battery_specs(model, fast=True)``; () : none).
    battery: Sequence[str] | None = None
    layer_items: int = 8
    max_control_items: int = MAX_CONTROL_ITEMS
    batch_size: int = EVAL_BATCH_SIZE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self) -> None:  # methods="ga_gdr" is the one method ga_gdr
        from unpact_mech.utils import one_or_many

        self.methods = one_or_many(self.methods) or ()
        self.strategies = one_or_many(self.strategies) or ()
        self.interventions = one_or_many(self.interventions) or ()
        if self.battery is not None:
            self.battery = one_or_many(self.battery) or ()

    @property
    def data_spec(self) -> str:
        return self.data or default_data(self.model)

    def train_options(self, method: str | None = None) -> dict[str, Any]:
        """The training options of ``method`` (the model's overrides, then --steps / --lr)."""
        options = train_overrides(self.model, method)
        options.update({k: v for k, v in (("steps", self.steps), ("lr", self.lr)) if v is not None})
        return options

    def validate(self) -> None:
        """Cheap checks before anything is loaded or written (raise :class:`InputError`)."""
        from unpact_mech.attacks import get_attack
        from unpact_mech.attacks.battery import WORDS
        from unpact_mech.pipeline.checks import check_methods, check_training

        check_methods(self.methods)
        for name in self.strategies:
            get_attack(name, kind="strategy")
        for text in self.interventions:
            get_attack(text, kind="intervention")
        for text in self.battery or ():
            if text not in WORDS:
                get_attack(text)
        check_training(self.steps, self.lr)
        if self.layer_items < 0:
            from unpact_mech.errors import InputError

            raise InputError(f"--layer-items must be >= 0, got {self.layer_items}")


@dataclass
class DemoResult:
    out: Path
    headline: pd.DataFrame
    summary: dict[str, Any]
    report: Path | None
    seconds: float
    notes: list[str] = field(default_factory=list)


class _Stages:
    """Numbered stage messages ("[2/7] ...") through ``log``."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.n, self.total, self.log, self.t0 = 0, total, log, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.n += 1
        self.log(f"[{self.n}/{self.total} {time.perf_counter() - self.t0:5.0f}s] {text}")


def run_demo(
    config: DemoConfig | None = None,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into ``out`` (default: a new time-stamped directory under ``unpact-runs/``)."""
    from unpact_mech.attacks import get_attack, resolve_attacks
    from unpact_mech.attacks.battery import battery_specs, expand_specs
    from unpact_mech.data import FORGET, load_items, require_split
    from unpact_mech.io import atomic_output_dir, check_outside
    from unpact_mech.models import load_model
    from unpact_mech.pipeline.rundir import new_run_dir
    from unpact_mech.pipeline.session import Session
    from unpact_mech.report.html_report import build_report
    from unpact_mech.runtime import seed_everything

    cfg = config or DemoConfig()
    cfg.validate()
    t_start = time.perf_counter()
    items = load_items(cfg.data_spec)  # bad data fails before anything is created
    forget = require_split(items, FORGET, cfg.data_spec)
    out, notes = new_run_dir(out, cfg.model, prefix="demo")
    for note in notes:
        log("note: " + note)
    seed_everything(cfg.seed)
    stage = _Stages(3 + (3 + (cfg.battery != ())) * len(cfg.methods), log)

    with atomic_output_dir(out) as tmp:
        stage(f"loading {cfg.model} ({cfg.backend}) and evaluating {len(items)} items of {cfg.data_spec}")
        original = load_model(cfg.model, backend=cfg.backend, device=cfg.device, dtype=cfg.dtype)
        check_outside(out, original.source_dir, "--out")
        interventions = [get_attack(t, kind="intervention").resolve(original) for t in cfg.interventions]
        battery = resolve_attacks(
            expand_specs(list(cfg.battery), original)
            if cfg.battery is not None
            else battery_specs(original, fast=True),
            original,
        )  # options checked against the model before any work
        session = Session(
            cfg.model,
            cfg.data_spec,
            items,
            original,
            tmp,
            seed=cfg.seed,
            backend=cfg.backend,
            device=cfg.device,
            dtype=cfg.dtype,
            progress=progress,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
        )
        eval_summary = session.write_evaluation()

        layer_items = forget[: cfg.layer_items]
        stage(
            f"attributing on the original: occlusion of {len(items)} items (words), residual stream and "
            f"attention paths of {len(layer_items)} forget items"
        )
        occlusion = session.attribute(original, items, "original")
        layer_runs = (
            {m: session.attribute(original, layer_items, "original", m) for m in ("residual", "attention")}
            if layer_items
            else {}
        )
        keywords = session.original_keywords(items, occlusion)  # the bare-answer KeyTokens (reuses a bare run)

        rcfg = session.recovery_config([*cfg.strategies, *interventions], max_control_items=cfg.max_control_items)
        bcfg = session.recovery_config(battery, max_control_items=cfg.max_control_items)
        headline, long_rows = [], []
        for method in cfg.methods:
            stage(f"{method}: unlearning a fresh copy of {cfg.model}")
            model, result = session.unlearn_fresh_copy(
                method, cfg.train_options(method), initial_evaluation=session.original_evaluation
            )
            stage(f"{method}: attributing again (original vs unlearned)")
            occ = session.attribute_pair("occlusion", occlusion, model, items, method)
            for name, before in layer_runs.items():
                session.attribute_pair(name, before, model, layer_items, method)
            stage(
                f"{method}: recovering by keyword emphasis ({len(cfg.strategies)} prompt strategies, "
                f"{len(interventions)} interventions, with controls)"
            )
            rec = session.recover(model, method, rcfg, keywords)
            gone = None
            if battery:
                stage(f"{method}: is it really gone? {len(battery)} battery conditions, with controls")
                gone = session.recover(model, method, bcfg, keywords, folder="battery")
            headline.append(headline_row(method, result.summary, occ, rec, gone))
            long_rows.append(headline_long(method, result.summary, occ, rec, gone))
            del model

        stage("writing summary.json, results.csv and report.html")
        summary = {
            "model": cfg.model,
            "data": cfg.data_spec,
            "backend": cfg.backend,
            "seed": cfg.seed,
            "original_accuracy": eval_summary["accuracy_by_split"],
            "original_keyword_hit_rate": occlusion.summary.get("keyword_hit_rate"),
            "methods": headline,
            "seconds": time.perf_counter() - t_start,
        }
        config_record = asdict(cfg) | {
            "data": cfg.data_spec,
            "train_overrides": cfg.train_options(),
            "lineages": session.lineages,
        }
        top = session.record("demo", config_record, original.lineage)
        top.write(tmp, pd.concat(long_rows, ignore_index=True), summary)
    # the report is built in place (its paths name the final directory); `unpact report OUT` rebuilds it
    report = build_report(out, title=f"unpact demo · {cfg.model} · {', '.join(cfg.methods)}")
    return DemoResult(out, pd.DataFrame(headline), summary, report, time.perf_counter() - t_start, notes)


# -- the headline ------------------------------------------------------------------------------------------------
def keytoken_row(comparison: dict[str, Any], split: str = "forget") -> dict[str, Any]:
    """Mean KeyToken / other-word contribution before and after on the ``split`` items (the paper's finding 1)."""
    kt = ((comparison.get("keytoken_change") or {}).get("by_split") or {}).get(split) or {}
    row = {}
    for group, key in (("keytokens", "keytoken"), ("other", "other")):
        if isinstance(kt.get(group), dict):
            row[f"{key}_contribution_before"] = kt[group].get("before")
            row[f"{key}_contribution_after"] = kt[group].get("after")
    return row


def best_condition(rec, kind: str) -> dict[str, Any]:
    """The best non-control condition of ``kind`` (:func:`~unpact_mech.recovery.worst_case.top_condition`): its
    name, recovery rate, random-control rate, the number K of conditions it was picked from, and its exact McNemar
    p-value against the random control, Holm-adjusted over every condition of the run (so a best-of-K pick is not
    reported as if it were the only test)."""
    top = top_condition(rec.rates, kind=kind)
    return {"name": top["condition"] or "", "recovery": top.get("rate"), "random_control": top.get("random_control"),
            "of": top["of"], "p_holm": top.get("p_holm")}  # fmt: skip


def battery_worst(gone) -> dict[str, Any]:
    """The worst case of a battery run for the unlearned model (:func:`~unpact_mech.recovery.worst_case.top_condition`
    over every non-control condition): its recovery rate, exact interval, the original's accuracy under the same
    attack, the share of the forget-set gap it closes, and the number of conditions it was picked from (a maximum
    over K conditions is optimistic)."""
    top = top_condition(gone.rates) if gone is not None else {"condition": None, "of": 0}
    return {"battery_worst": top["condition"] or "", "battery_worst_recovery": top.get("rate"),
            "battery_worst_ci_low": top.get("ci_low"), "battery_worst_ci_high": top.get("ci_high"),
            "battery_worst_original_after": top.get("original_after"),
            "battery_worst_gap_fraction": top.get("gap_fraction"), "battery_of": top["of"]}  # fmt: skip


def headline_row(method: str, unlearn_summary: dict[str, Any], occ: dict[str, Any], rec, gone=None) -> dict[str, Any]:
    """One row of the demo's headline table (utility = held-out facts; retain = the facts the retain loss trains on;
    ``gone``: the battery's recovery result, whose worst case is added)."""
    s = unlearn_summary
    row: dict[str, Any] = {"method": method}
    for split in SPLITS:
        row[f"{split}_acc_before"] = s.get(f"{split}_accuracy_before")
        row[f"{split}_acc_after"] = s.get(f"{split}_accuracy_after")
    row |= keytoken_row(occ)
    row["eligible"] = rec.summary.get("n_eligible")
    for kind, label in (("strategy", "prompt"), ("intervention", "activation")):
        best = best_condition(rec, kind)
        row[f"best_{label}"] = best["name"]
        row[f"best_{label}_recovery"] = best["recovery"]
        row[f"best_{label}_random_control"] = best["random_control"]
        row[f"best_{label}_of"] = best["of"]
        row[f"best_{label}_p_holm"] = best["p_holm"]
    row["utility_destructive_rate"] = rec.summary.get("utility_destructive_rate")
    row["retain_destructive_rate"] = rec.summary.get("retain_destructive_rate")
    return row | battery_worst(gone)


def headline_long(method: str, unlearn_summary: dict[str, Any], occ: dict[str, Any], rec, gone=None) -> pd.DataFrame:
    """The headline numbers in the long ``results.csv`` format (``item_id`` "all": aggregates)."""
    base = {"item_id": "all", "method": method}
    rows = [
        base | {"split": split, "metric": f"accuracy_{when}", "value": unlearn_summary.get(f"{split}_accuracy_{when}"),
                "stage": "unlearn"}
        for split in SPLITS for when in ("before", "after")
    ]  # fmt: skip
    rows += [
        base | {"split": "forget", "metric": key, "value": value, "stage": "attribution"}
        for key, value in keytoken_row(occ).items()
    ]
    for stage, result in (("recovery", rec), ("battery", gone)):
        for r in result.rates.itertuples() if result is not None else ():
            for metric in ("recovery_rate", "random_control_rate", "p_vs_random_holm", "gap_fraction"):
                rows.append(base | {"split": "forget", "metric": metric, "value": getattr(r, metric), "stage": stage,
                                    "kind": r.kind, "condition": r.condition})  # fmt: skip
    for split in ("utility", "retain"):
        rows.append(base | {"split": split, "metric": "destructive_rate", "stage": "recovery",
                            "value": rec.summary.get(f"{split}_destructive_rate")})  # fmt: skip
    return pd.DataFrame(rows)


def format_headline(headline: pd.DataFrame) -> str:
    """Plain-text headline table for the terminal (``—`` for a value that does not exist)."""
    from unpact_mech.commands.common import fmt

    lines = []
    for r in headline.to_dict("records"):
        kt = ""
        if r.get("keytoken_contribution_before") is not None:
            kt = (f"; KeyToken contribution {fmt(r['keytoken_contribution_before'])} -> "
                  f"{fmt(r['keytoken_contribution_after'])} (other words {fmt(r.get('other_contribution_before'))} -> "
                  f"{fmt(r.get('other_contribution_after'))})")  # fmt: skip
        lines.append(
            f"  {r['method']}: forget acc {fmt(r['forget_acc_before'])} -> {fmt(r['forget_acc_after'])}, "
            f"utility acc {fmt(r['utility_acc_before'])} -> {fmt(r['utility_acc_after'])}, "
            f"retain acc (trained on) {fmt(r['retain_acc_before'])} -> {fmt(r['retain_acc_after'])}{kt}"
        )
        for label in ("prompt", "activation"):
            name = r.get(f"best_{label}")
            if name:
                lines.append(
                    f"      best {label} recovery (best of {r[f'best_{label}_of']}): {name} "
                    f"{fmt(r[f'best_{label}_recovery'])} of {r['eligible']} forgotten items (random control "
                    f"{fmt(r.get(f'best_{label}_random_control'))}, McNemar p vs control "
                    f"{fmt(r.get(f'best_{label}_p_holm'), '.3f')} "
                    "Holm-adjusted)"
                )
            elif r.get("eligible") == 0:
                lines.append(f"      {label} recovery: — (0 eligible forget items: nothing was forgotten)")
                break
        lines.append(
            f"      destructive rate: utility items {fmt(r.get('utility_destructive_rate'))}, "
            f"retain (trained-on) items {fmt(r.get('retain_destructive_rate'))}"
        )
        if r.get("battery_worst"):
            lines.append(
                f"      is it gone? worst case of the battery (max of {r['battery_of']}): {r['battery_worst']} "
                f"{fmt(r['battery_worst_recovery'])} [{fmt(r['battery_worst_ci_low'])}, "
                f"{fmt(r['battery_worst_ci_high'])}] of {r['eligible']} forgotten items (original under the same "
                f"attack {fmt(r.get('battery_worst_original_after'))}; gap closed on the forget set "
                f"{fmt(r.get('battery_worst_gap_fraction'))})"
            )
    return "\n".join(lines)
