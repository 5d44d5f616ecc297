"""``unpact demo``: the whole unPact question on one model, in one command, into one run directory.

Stages (each writes the same files as the matching command, so ``unpact report`` renders them all):

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
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.attribution.run import AttributionRun
    from unpact_mech.io import RunWriter
    from unpact_mech.unlearning.run import UnlearnResult
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

DEFAULT_METHODS = ("ga_gdr", "npo_gdr")
#: Prompt strategies of the demo: two emphasis prompts that recovered most in ENV.md's probe, quoting, and the
#: neutral-instruction control (the full registry runs with ``unpact recover``).
DEMO_STRATEGIES = ("focus", "repeat_question", "quote", "neutral")
DEMO_INTERVENTIONS = ("patch", "pasta")
#: Data and training overrides per built-in model (the unlearning recipes are tuned on SmolLM2; the tiny model
#: is saturated on its synthetic facts and needs a larger step, see docs/unlearning.md).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "smollm2": {"data": "builtin:real_facts", "train": {}},
    "tiny": {"data": "builtin:synthetic_facts", "train": {"lr": 3e-4, "steps": 6}},
}
RUNS_DIR = Path("unpact-runs")


@dataclass
class DemoConfig:
    """Everything that decides the demo's numbers (recorded in ``run.json``)."""

    model: str = "smollm2"
    methods: Sequence[str] = DEFAULT_METHODS
    data: str | None = None  # default: MODEL_DEFAULTS[model]["data"], else builtin:real_facts
    backend: str = "transformer_lens"
    seed: int = 0
    steps: int | None = None  # None: the method's recipe (or the model's override)
    lr: float | None = None
    strategies: Sequence[str] = DEMO_STRATEGIES
    interventions: Sequence[str] = DEMO_INTERVENTIONS
    layer_items: int = 8
    max_control_items: int = 16
    n_boot: int = 1000
    batch_size: int = 16
    max_new_tokens: int = 12

    @property
    def data_spec(self) -> str:
        return self.data or MODEL_DEFAULTS.get(self.model, {}).get("data", "builtin:real_facts")

    def train_options(self) -> dict[str, Any]:
        options = dict(MODEL_DEFAULTS.get(self.model, {}).get("train", {}))
        options.update({k: v for k, v in (("steps", self.steps), ("lr", self.lr)) if v is not None})
        return options

    def validate(self) -> None:
        """Cheap checks before anything is loaded or written (raise :class:`InputError`)."""
        from unpact_mech.recovery.interventions import parse_intervention
        from unpact_mech.recovery.strategies import get_strategy
        from unpact_mech.unlearning import METHODS, get_method

        if not self.methods:
            raise InputError("--methods: give at least one unlearning method")
        for name in self.methods:
            if name not in METHODS:
                raise InputError(f"--methods: unknown unlearning method {name!r}; choose from: {', '.join(METHODS)}")
            get_method(name)
        if len(set(self.methods)) != len(self.methods):
            raise InputError("--methods: a method is listed twice")
        for name in self.strategies:
            get_strategy(name)
        for text in self.interventions:
            parse_intervention(text)
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be an integer >= 1, got {self.steps}")
        if self.lr is not None and not (self.lr > 0 and self.lr < float("inf")):
            raise InputError(f"--lr must be a finite number > 0, got {self.lr}")
        if self.layer_items < 0:
            raise InputError(f"--layer-items must be >= 0, got {self.layer_items}")


@dataclass
class DemoResult:
    out: Path
    headline: pd.DataFrame
    summary: dict[str, Any]
    report: Path | None
    seconds: float
    notes: list[str] = field(default_factory=list)


def default_out(model: str, now: datetime | None = None, *, prefix: str = "demo") -> Path:
    """``unpact-runs/<prefix>-<model>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken): never an earlier run."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(model).name) or "model"
    stem = f"{prefix}-{safe}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    candidates = (RUNS_DIR / (stem if n == 1 else f"{stem}-{n}") for n in range(1, 10_000))
    return next(c for c in candidates if not c.exists())


def interrupted_runs(out: Path) -> list[Path]:
    """Temporary directories left by demos that were killed before they finished (next to ``out``)."""
    parent = out.expanduser().absolute().parent
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.glob("demo-*.tmp-*") if p.is_dir())


# -- stages ------------------------------------------------------------------------------------------------------
class _Stages:
    """Numbered stage messages ("[2/7] ...") through ``log``."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.n, self.total, self.log, self.t0 = 0, total, log, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.n += 1
        self.log(f"[{self.n}/{self.total} {time.perf_counter() - self.t0:5.0f}s] {text}")


def _run_meta(command: str, config: dict[str, Any], seed: int, data: str, lineage: list[dict[str, Any]]):
    from unpact_mech.io import RunWriter

    run = RunWriter(command, config=config, seed=seed, argv=["unpact", "demo"])
    run.add_input("data", None if data.startswith("builtin:") else data)
    run.lineage = list(lineage)
    return run


def unlearn_fresh_copy(
    spec: str, method: str, items: Sequence["QAItem"], out_parent: Path, *, backend: str, seed: int, data_label: str,
    train_options: dict[str, Any], batch_size: int, max_new_tokens: int, progress: bool,
    run_writer: Callable[[dict[str, Any], list[dict[str, Any]]], "RunWriter"],
    initial_evaluation: pd.DataFrame | None = None,
) -> tuple["HookedLM", "UnlearnResult"]:
    """Load a fresh copy of ``spec``, unlearn ``method`` on it (seeded) and write it to ``out_parent/<method>/`` as a
    loadable model with its lineage; ``run_writer(config, lineage)`` makes the stage's ``run.json`` writer.
    Shared by the demo and the experiment scripts."""
    from unpact_mech.models import load_model
    from unpact_mech.runtime import seed_everything
    from unpact_mech.unlearning import unlearn, write_unlearned

    seed_everything(seed)
    model = load_model(spec, backend=backend)
    result = unlearn(model, items, method, seed=seed, progress=progress, eval_batch_size=batch_size,
                     max_new_tokens=max_new_tokens, data_label=data_label, initial_evaluation=initial_evaluation,
                     **train_options)
    model.name = method
    out_parent.mkdir(exist_ok=True)
    config = {"method": method, "model": spec, "resolved": vars(result.config), "hyperparameters": dict(result.method.hp)}
    write_unlearned(model, result, out_parent / method, run=run_writer(config, model.lineage))
    return model, result


def _attribute_pair(
    tmp: Path, name: str, before: "AttributionRun", unlearned: "HookedLM", items: Sequence["QAItem"], label: str,
    cfg: "DemoConfig", lineage: list[dict[str, Any]], progress: bool,
) -> dict[str, Any]:
    """Attribute ``items`` on the unlearned model with ``before``'s config, compare, write; return the comparison summary."""
    from unpact_mech.attribution.outputs import attribution_summary, write_attribution
    from unpact_mech.attribution.run import attribute_items, compare_runs

    after = attribute_items(unlearned, items, before.config, label=label, progress=progress)
    comparison = compare_runs(before, after)
    summary = attribution_summary([before, after], comparison, [before.model, label], cfg.backend)
    out = tmp / "attribution" / label / name
    out.mkdir(parents=True)
    run = _run_meta("attribute", {"method": before.config.method, "level": before.config.level, "target": before.config.target,
                                  "model": cfg.model, "compare_to": label, "stage": "demo"}, cfg.seed, cfg.data_spec, lineage)
    write_attribution(out, [before, after], comparison, items, run, summary,
                      title=f"{name} attribution: original vs {label}", subtitle=f"{before.model} vs {label}")
    return comparison.summary


def _keytoken_row(comparison: dict[str, Any], split: str = "forget") -> dict[str, Any]:
    """Mean KeyToken / other-word contribution before and after on the ``split`` items (the paper's finding 1)."""
    kt = ((comparison.get("keytoken_change") or {}).get("by_split") or {}).get(split) or {}
    row = {}
    for group, key in (("keytokens", "keytoken"), ("other", "other")):
        if isinstance(kt.get(group), dict):
            row[f"{key}_contribution_before"] = kt[group].get("before")
            row[f"{key}_contribution_after"] = kt[group].get("after")
    return row


def run_demo(
    config: DemoConfig | None = None,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into ``out`` (default :func:`default_out`); see the module docstring."""
    from unpact_mech.attribution.run import AttributionConfig, attribute_items
    from unpact_mech.data import load_items
    from unpact_mech.io import atomic_output_dir, atomic_write_text, prepare_output_path, write_json
    from unpact_mech.models import load_model
    from unpact_mech.recovery import RecoveryConfig, parse_intervention, resolve, run_recovery
    from unpact_mech.recovery.keywords import keywords_from_attribution
    from unpact_mech.recovery.outputs import write_recovery
    from unpact_mech.recovery.run import recovered_lineage
    from unpact_mech.report.html_report import build_report
    from unpact_mech.runtime import seed_everything
    from unpact_mech.scoring.evaluate import evaluate_items, summarize, write_evaluation
    from unpact_mech.scoring.tokens import encode_item

    cfg = config or DemoConfig()
    cfg.validate()
    t_start = time.perf_counter()
    items = load_items(cfg.data_spec)  # bad data fails before anything is created
    if out is None:
        RUNS_DIR.mkdir(exist_ok=True)
        out = default_out(cfg.model)
    out = Path(out)
    prepare_output_path(out)  # an existing run directory is never overwritten
    notes = []
    stale = interrupted_runs(out)
    if stale:
        notes.append(f"{len(stale)} interrupted earlier demo(s) left partial files (not used; safe to delete): "
                     + ", ".join(str(p) for p in stale[:3]) + (" ..." if len(stale) > 3 else ""))
        log("note: " + notes[-1])
    forget = [it for it in items if it.split == "forget"]
    if not forget:
        raise InputError(f"{cfg.data_spec}: no forget items (\"split\": \"forget\")")
    seed_everything(cfg.seed)
    stage = _Stages(3 + 3 * len(cfg.methods), log)
    config_record = asdict(cfg) | {"data": cfg.data_spec, "train_overrides": cfg.train_options()}

    with atomic_output_dir(out) as tmp:
        # 1. evaluate -----------------------------------------------------------------------------------------
        stage(f"loading {cfg.model} ({cfg.backend}) and evaluating {len(items)} items of {cfg.data_spec}")
        original = load_model(cfg.model, backend=cfg.backend)
        specs = [resolve(parse_intervention(t), original) for t in cfg.interventions]  # layer/head errors before work
        base_lineage = list(original.lineage)
        evaluation = evaluate_items(original, items, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                    progress=progress)
        eval_summary = summarize(evaluation) | {"model": original.name, "judge": "contains", "backend": cfg.backend}
        (tmp / "evaluate").mkdir()
        write_evaluation(tmp / "evaluate", evaluation, eval_summary,
                         _run_meta("evaluate", {"model": cfg.model, "stage": "demo"}, cfg.seed, cfg.data_spec, base_lineage),
                         model=original.name)

        # 2. attribution on the original ------------------------------------------------------------------------
        layer_items = forget[: cfg.layer_items]
        stage(f"attributing on the original: occlusion of {len(items)} items (words), residual stream and "
              f"attention paths of {len(layer_items)} forget items")
        occ_cfg = AttributionConfig(method="occlusion", level="word", batch_size=64)
        occlusion_o = attribute_items(original, items, occ_cfg, label="original", progress=progress)
        layer_runs_o = {m: attribute_items(original, layer_items, AttributionConfig(method=m), label="original", progress=progress)
                        for m in ("residual", "attention")} if layer_items else {}
        keywords = keywords_from_attribution([encode_item(original, it) for it in items], occlusion_o.units,
                                             alpha=occ_cfg.alpha, beta=occ_cfg.beta)

        # 3. per method: unlearn, attribute again, recover -----------------------------------------------------
        rcfg = RecoveryConfig(strategies=tuple(cfg.strategies), interventions=specs, keyword_source="attribution",
                              max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, n_boot=cfg.n_boot,
                              seed=cfg.seed, max_control_items=cfg.max_control_items)
        headline, long_rows, lineages = [], [], {}
        for method in cfg.methods:
            stage(f"{method}: unlearning a fresh copy of {cfg.model}")
            model, result = unlearn_fresh_copy(
                cfg.model, method, items, tmp / "unlearned", backend=cfg.backend, seed=cfg.seed, data_label=cfg.data_spec,
                train_options=cfg.train_options(), batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                progress=progress, initial_evaluation=evaluation,
                run_writer=lambda config, lineage: _run_meta("unlearn", config | {"stage": "demo"}, cfg.seed, cfg.data_spec, lineage),
            )
            lineages[method] = model.lineage

            stage(f"{method}: attributing again (original vs unlearned)")
            occ = _attribute_pair(tmp, "occlusion", occlusion_o, model, items, method, cfg, model.lineage, progress)
            for name, before in layer_runs_o.items():
                _attribute_pair(tmp, name, before, model, layer_items, method, cfg, model.lineage, progress)

            stage(f"{method}: recovering by keyword emphasis ({len(cfg.strategies)} prompt strategies, "
                  f"{len(specs)} interventions, with controls)")
            rec = run_recovery(original, model, items, rcfg, keywords=keywords, original_baseline=evaluation, progress=progress)
            rec_dir = tmp / "recovery" / method
            rec_dir.mkdir(parents=True)
            lineage = recovered_lineage(model, cfg.strategies, specs, "attribution", cfg.model)
            write_recovery(rec_dir, rec, _run_meta("recover", {"original": cfg.model, "unlearned": f"unlearned/{method}",
                                                              "stage": "demo", "strategies": list(cfg.strategies),
                                                              "interventions": list(cfg.interventions)},
                                                   cfg.seed, cfg.data_spec, lineage),
                           rec.summary | {"original": cfg.model, "unlearned": method, "backend": cfg.backend})
            headline.append(_headline_row(method, result.summary, occ, rec))
            long_rows.append(_long_rows(method, result.summary, occ, rec))
            del model

        stage("writing summary.json, results.csv and report.html")
        summary = {
            "model": cfg.model, "data": cfg.data_spec, "backend": cfg.backend, "seed": cfg.seed,
            "original_accuracy": eval_summary["accuracy_by_split"],
            "original_keyword_hit_rate": occlusion_o.summary.get("keyword_hit_rate"),
            "methods": headline,
            "seconds": time.perf_counter() - t_start,
        }
        top = _run_meta("demo", config_record, cfg.seed, cfg.data_spec, base_lineage)
        top.config["lineages"] = lineages
        top.write(tmp, pd.concat(long_rows, ignore_index=True), summary)
    # the report is built in place (its paths name the final directory); `unpact report OUT` rebuilds it
    report = build_report(out, title=f"unpact demo · {cfg.model} · {', '.join(cfg.methods)}")
    return DemoResult(out, pd.DataFrame(headline), summary, report, time.perf_counter() - t_start, notes)


def _best(rates: pd.DataFrame, kind: str) -> tuple[str, float, float | None]:
    sub = rates[(rates["kind"] == kind) & (rates["condition"] != "neutral")].dropna(subset=["recovery_rate"])
    if not len(sub):
        return "", float("nan"), None
    row = sub.loc[sub["recovery_rate"].idxmax()]
    return str(row["condition"]), float(row["recovery_rate"]), (None if pd.isna(row.get("random_control_rate")) else float(row["random_control_rate"]))


def _headline_row(method: str, unlearn_summary: dict[str, Any], occ: dict[str, Any], rec) -> dict[str, Any]:
    """One row of the demo's headline table."""
    s, r = unlearn_summary, rec.summary
    row: dict[str, Any] = {
        "method": method,
        "forget_acc_before": s["forget_accuracy_before"], "forget_acc_after": s["forget_accuracy_after"],
        "retain_acc_before": s["retain_accuracy_before"], "retain_acc_after": s["retain_accuracy_after"],
    }
    row |= _keytoken_row(occ)
    row["eligible"] = r.get("n_eligible")
    for kind, label in (("strategy", "prompt"), ("intervention", "activation")):
        name, value, control = _best(rec.rates, kind)
        row[f"best_{label}"] = name
        row[f"best_{label}_recovery"] = value
        row[f"best_{label}_random_control"] = control
    row["destructive_rate"] = r.get("destructive_rate")
    return row


def _long_rows(method: str, unlearn_summary: dict[str, Any], occ: dict[str, Any], rec) -> pd.DataFrame:
    """The headline numbers in the long ``results.csv`` format (``item_id`` "all": aggregates)."""
    rows = []
    for split in ("forget", "retain"):
        for when in ("before", "after"):
            rows.append({"item_id": "all", "split": split, "metric": f"accuracy_{when}",
                         "value": unlearn_summary[f"{split}_accuracy_{when}"], "method": method, "stage": "unlearn"})
    for key, value in _keytoken_row(occ).items():
        rows.append({"item_id": "all", "split": "forget", "metric": key, "value": value, "method": method, "stage": "attribution"})
    for r in rec.rates.itertuples():
        for metric in ("recovery_rate", "random_control_rate"):
            value = getattr(r, metric, float("nan"))
            rows.append({"item_id": "all", "split": "forget", "metric": metric, "value": value, "method": method,
                         "stage": "recovery", "kind": r.kind, "condition": r.condition})
    if rec.summary.get("destructive_rate") is not None:
        rows.append({"item_id": "all", "split": "retain", "metric": "destructive_rate", "value": rec.summary["destructive_rate"],
                     "method": method, "stage": "recovery"})
    return pd.DataFrame(rows)


def format_headline(headline: pd.DataFrame) -> str:
    """Plain-text headline table for the terminal."""
    lines = []
    for r in headline.to_dict("records"):
        kt = ""
        if r.get("keytoken_contribution_before") is not None:
            kt = (f"; KeyToken contribution {r['keytoken_contribution_before']:.2f} -> {r['keytoken_contribution_after']:.2f}"
                  f" (other words {r.get('other_contribution_before', float('nan')):.2f} -> {r.get('other_contribution_after', float('nan')):.2f})")
        lines.append(f"  {r['method']}: forget acc {r['forget_acc_before']:.2f} -> {r['forget_acc_after']:.2f}, "
                     f"retain acc {r['retain_acc_before']:.2f} -> {r['retain_acc_after']:.2f}{kt}")
        for label in ("prompt", "activation"):
            name = r.get(f"best_{label}")
            if name:
                ctrl = r.get(f"best_{label}_random_control")
                ctrl_txt = f" (random-word control {ctrl:.2f})" if ctrl is not None else ""
                lines.append(f"      best {label} recovery: {name} {r[f'best_{label}_recovery']:.2f} of "
                             f"{r['eligible']} forgotten items{ctrl_txt}")
        if r.get("destructive_rate") is not None:
            lines.append(f"      destructive rate on retain items: {r['destructive_rate']:.2f}")
    return "\n".join(lines)
