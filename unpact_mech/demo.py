"""``unpact demo``: the whole unPact question on one model, in one command, into one run directory.

A sequence of the shared pipeline stages (:mod:`unpact_mech.pipeline`):

1. ``evaluate/`` — greedy answers of every item on the original model (accuracy per split);
2. attribution on the ORIGINAL model: word-level occlusion (the paper's score) of every item — its KeyTokens are
   the recovery keywords — and residual-stream / attention-path attribution of the first ``layer_items`` forget items;
3. per unlearning method, on a fresh copy of the model (the original stays loaded and untouched):
   ``unlearned/<method>/`` (a loadable model directory with dynamics), ``attribution/<method>/{occlusion,residual,
   attention}/`` (original vs unlearned, KeyToken shift), ``recovery/<method>/`` (prompt strategies and activation
   interventions at the keywords, with random-word, original-model and retain controls, bootstrap CIs);
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

from unpact_mech.pipeline.presets import (
    BATCH_SIZE,
    DEFAULT_METHODS,
    DEMO_INTERVENTIONS,
    DEMO_STRATEGIES,
    MAX_CONTROL_ITEMS,
    MAX_NEW_TOKENS,
    default_data,
    train_overrides,
)


@dataclass
class DemoConfig:
    """Everything that decides the demo's numbers (recorded in ``run.json``)."""

    model: str = "smollm2"
    methods: Sequence[str] = DEFAULT_METHODS
    data: str | None = None  # default: the model's data set (presets.MODEL_DEFAULTS)
    backend: str = "transformer_lens"
    seed: int = 0
    steps: int | None = None  # None: the method's recipe (or the model's override)
    lr: float | None = None
    strategies: Sequence[str] = DEMO_STRATEGIES
    interventions: Sequence[str] = DEMO_INTERVENTIONS
    layer_items: int = 8
    max_control_items: int = MAX_CONTROL_ITEMS
    n_boot: int = 1000
    batch_size: int = BATCH_SIZE
    max_new_tokens: int = MAX_NEW_TOKENS

    @property
    def data_spec(self) -> str:
        return self.data or default_data(self.model)

    def train_options(self) -> dict[str, Any]:
        options = train_overrides(self.model)
        options.update({k: v for k, v in (("steps", self.steps), ("lr", self.lr)) if v is not None})
        return options

    def validate(self) -> None:
        """Cheap checks before anything is loaded or written (raise :class:`InputError`)."""
        from unpact_mech.attacks import get_attack
        from unpact_mech.pipeline.checks import check_methods, check_training

        check_methods(self.methods)
        for name in self.strategies:
            get_attack(name, kind="strategy")
        for text in self.interventions:
            get_attack(text, kind="intervention")
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
    from unpact_mech.attacks import get_attack
    from unpact_mech.data import FORGET, load_items, require_split
    from unpact_mech.io import atomic_output_dir
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
    stage = _Stages(3 + 3 * len(cfg.methods), log)

    with atomic_output_dir(out) as tmp:
        stage(f"loading {cfg.model} ({cfg.backend}) and evaluating {len(items)} items of {cfg.data_spec}")
        original = load_model(cfg.model, backend=cfg.backend)
        interventions = [get_attack(t, kind="intervention").resolve(original) for t in cfg.interventions]
        session = Session(
            cfg.model,
            cfg.data_spec,
            items,
            original,
            tmp,
            seed=cfg.seed,
            backend=cfg.backend,
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
        keywords = session.keywords(occlusion, items)

        rcfg = session.recovery_config(
            [*cfg.strategies, *interventions], n_boot=cfg.n_boot, max_control_items=cfg.max_control_items
        )
        headline, long_rows = [], []
        for method in cfg.methods:
            stage(f"{method}: unlearning a fresh copy of {cfg.model}")
            model, result = session.unlearn_fresh_copy(
                method, cfg.train_options(), initial_evaluation=session.original_evaluation
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
            headline.append(headline_row(method, result.summary, occ, rec))
            long_rows.append(headline_long(method, result.summary, occ, rec))
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


def best_condition(rec, kind: str) -> tuple[str, float, float | None]:
    """``(condition, recovery rate, its random-word control rate)`` of the best non-control condition of ``kind``."""
    controls = {a.label for a in rec.attacks if a.is_control}
    rates = rec.rates
    sub = rates[(rates["kind"] == kind) & ~rates["condition"].isin(controls)].dropna(subset=["recovery_rate"])
    if not len(sub):
        return "", float("nan"), None
    row = sub.loc[sub["recovery_rate"].idxmax()]
    control = row.get("random_control_rate")
    return str(row["condition"]), float(row["recovery_rate"]), None if pd.isna(control) else float(control)


def headline_row(method: str, unlearn_summary: dict[str, Any], occ: dict[str, Any], rec) -> dict[str, Any]:
    """One row of the demo's headline table."""
    s = unlearn_summary
    row: dict[str, Any] = {
        "method": method,
        "forget_acc_before": s["forget_accuracy_before"],
        "forget_acc_after": s["forget_accuracy_after"],
        "retain_acc_before": s["retain_accuracy_before"],
        "retain_acc_after": s["retain_accuracy_after"],
    }
    row |= keytoken_row(occ)
    row["eligible"] = rec.summary.get("n_eligible")
    for kind, label in (("strategy", "prompt"), ("intervention", "activation")):
        name, value, control = best_condition(rec, kind)
        row[f"best_{label}"] = name
        row[f"best_{label}_recovery"] = value
        row[f"best_{label}_random_control"] = control
    row["destructive_rate"] = rec.summary.get("destructive_rate")
    return row


def headline_long(method: str, unlearn_summary: dict[str, Any], occ: dict[str, Any], rec) -> pd.DataFrame:
    """The headline numbers in the long ``results.csv`` format (``item_id`` "all": aggregates)."""
    rows = []
    for split in ("forget", "retain"):
        for when in ("before", "after"):
            rows.append(
                {
                    "item_id": "all",
                    "split": split,
                    "metric": f"accuracy_{when}",
                    "value": unlearn_summary[f"{split}_accuracy_{when}"],
                    "method": method,
                    "stage": "unlearn",
                }
            )
    for key, value in keytoken_row(occ).items():
        rows.append(
            {
                "item_id": "all",
                "split": "forget",
                "metric": key,
                "value": value,
                "method": method,
                "stage": "attribution",
            }
        )
    for r in rec.rates.itertuples():
        for metric in ("recovery_rate", "random_control_rate"):
            rows.append(
                {
                    "item_id": "all",
                    "split": "forget",
                    "metric": metric,
                    "value": getattr(r, metric, float("nan")),
                    "method": method,
                    "stage": "recovery",
                    "kind": r.kind,
                    "condition": r.condition,
                }
            )
    if rec.summary.get("destructive_rate") is not None:
        rows.append(
            {
                "item_id": "all",
                "split": "retain",
                "metric": "destructive_rate",
                "value": rec.summary["destructive_rate"],
                "method": method,
                "stage": "recovery",
            }
        )
    return pd.DataFrame(rows)


def format_headline(headline: pd.DataFrame) -> str:
    """Plain-text headline table for the terminal."""
    lines = []
    for r in headline.to_dict("records"):
        kt = ""
        if r.get("keytoken_contribution_before") is not None:
            kt = (
                f"; KeyToken contribution {r['keytoken_contribution_before']:.2f} -> "
                f"{r['keytoken_contribution_after']:.2f} (other words "
                f"{r.get('other_contribution_before', float('nan')):.2f} -> "
                f"{r.get('other_contribution_after', float('nan')):.2f})"
            )
        lines.append(
            f"  {r['method']}: forget acc {r['forget_acc_before']:.2f} -> {r['forget_acc_after']:.2f}, "
            f"retain acc {r['retain_acc_before']:.2f} -> {r['retain_acc_after']:.2f}{kt}"
        )
        for label in ("prompt", "activation"):
            name = r.get(f"best_{label}")
            if name:
                ctrl = r.get(f"best_{label}_random_control")
                ctrl_txt = f" (random-word control {ctrl:.2f})" if ctrl is not None else ""
                lines.append(
                    f"      best {label} recovery: {name} {r[f'best_{label}_recovery']:.2f} of "
                    f"{r['eligible']} forgotten items{ctrl_txt}"
                )
        if r.get("destructive_rate") is not None:
            lines.append(f"      destructive rate on retain items: {r['destructive_rate']:.2f}")
    return "\n".join(lines)
