"""Shared plumbing of the experiment scripts (one study per script in this directory).

Every script defines a :class:`Study` (its name, a one-paragraph description and a ``run(ctx)`` function) and calls
:func:`main`, which

1. parses the common options (``--model --methods --from-run --data --out --seed --backend --n-boot --quiet`` plus
   the study's own), and validates everything cheap first (unknown method, ``--from-run`` without the needed
   ``unlearned/<method>`` model directories, an ``--out`` that exists) -> one line on stderr, exit 2, nothing written;
2. loads the original model and the items, and hands the study a :class:`Context` that yields one unlearned model
   per method — loaded from ``--from-run DIR/unlearned/<method>`` (a demo run) or unlearned from a fresh copy with
   the demo's per-model recipe overrides (then also written to ``unlearned/<method>/`` with its lineage);
3. writes the run directory atomically (built in a temporary sibling, renamed at the end): ``run.json`` (command
   ``experiment:<name>``, config, seed, versions, lineage base -> unlearned of every model used), ``results.csv``
   (long), ``summary.json`` (``"table"``: the headline table as row dicts) and ``table.csv``; the study adds its
   PNG plots; prints the headline table and the output path.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from unpact_mech.commands.common import add_backend_option, add_seed_option, positive_int
from unpact_mech.demo import DemoConfig
from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.attribution.run import AttributionRun
    from unpact_mech.data.record import QAItem
    from unpact_mech.io import RunWriter
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.recovery.keywords import ItemKeywords

DEFAULT_METHODS = ("ga_gdr", "npo_gdr")
BATCH_SIZE = 16
MAX_NEW_TOKENS = 12
OCCLUSION_BATCH = 64
MAX_CONTROL_ITEMS = DemoConfig.max_control_items  # recovery: cap on the original-model and retain control items


# -- the study contract ------------------------------------------------------------------------------------------
@dataclass
class StudyResult:
    """What a study returns: the headline ``table``, the long ``results`` (``item_id, split, metric, value`` + keys)
    and extra ``summary`` entries (the table is added as ``summary["table"]``)."""

    table: pd.DataFrame
    results: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """One experiment script: ``run(ctx)`` does the work and writes its plots into ``ctx.out``."""

    name: str
    description: str
    run: Callable[["Context"], StudyResult]
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    first_method_only: bool = False  # only the first of --methods is used (loaded / trained)
    default_methods: tuple[str, ...] = DEFAULT_METHODS
    uses_from_run: bool = True  # False: the study trains its own models (--from-run is refused)
    methods_optional: bool = False  # True: --methods may be empty (the study has other inputs, e.g. merged runs)


# -- arguments ---------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser(study: Study) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{study.name}.py", description=study.description,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", metavar="SPEC",
                   help="smollm2 (default), tiny, or a local HF model directory")
    p.add_argument("--methods", nargs="*" if study.methods_optional else "+", default=list(study.default_methods), metavar="METHOD",
                   help=f"unlearning methods (default: {' '.join(study.default_methods)})")
    p.add_argument("--from-run", default=None, metavar="DIR",
                   help="reuse the unlearned models DIR/unlearned/<method>/ of an earlier `unpact demo` run "
                   "(default: unlearn a fresh copy per method)" if study.uses_from_run else argparse.SUPPRESS)
    p.add_argument("--data", default=None, metavar="FILE",
                   help="QA items (default: the --from-run models' data, else builtin:synthetic_facts for tiny and "
                   "builtin:real_facts otherwise)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"run directory to create; must not exist (default: unpact-runs/{study.name}-MODEL-TIMESTAMP)")
    add_seed_option(p)
    add_backend_option(p)
    p.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap resamples for CIs (default: 1000)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if study.add_options is not None:
        study.add_options(p)
    return p


def default_out(study: str, model: str, now: datetime | None = None) -> Path:
    """``unpact-runs/<study>-<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if taken (never an earlier run)."""
    from unpact_mech.demo import default_out as _default_out

    return _default_out(model, now, prefix=study)


# -- validation (before anything is loaded or written) -----------------------------------------------------------
def used_methods(study: Study, methods: Sequence[str]) -> tuple[str, ...]:
    return tuple(methods[:1]) if study.first_method_only else tuple(methods)


def check_methods(methods: Sequence[str]) -> None:
    from unpact_mech.unlearning import METHODS

    for name in methods:
        if name not in METHODS:
            raise InputError(f"--methods: unknown unlearning method {name!r}; choose from: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise InputError("--methods: a method is listed twice")


def run_lineages(from_run: Path, methods: Sequence[str], model: str) -> dict[str, list[dict[str, Any]]]:
    """Lineage of ``from_run/unlearned/<method>`` per method; InputError if one is missing or not from ``model``."""
    from unpact_mech.models.loading import resolve_spec

    if not from_run.is_dir():
        raise InputError(f"--from-run {from_run}: not a directory")
    available = sorted(p.name for p in (from_run / "unlearned").glob("*") if p.is_dir())
    lineages = {}
    for method in methods:
        path = from_run / "unlearned" / method
        if not path.is_dir():
            raise InputError(f"--from-run {from_run}: no unlearned/{method} model directory "
                             f"(it has: {', '.join(available) or 'none'})")
        lineage = resolve_spec(path).lineage
        base = lineage[0] if lineage else {}
        same = base.get("spec") == model or (
            base.get("path") and Path(base["path"]).resolve() == Path(model).expanduser().resolve())
        if len(lineage) < 2 or not same:
            raise InputError(f"--from-run {path}: not a model unlearned from --model {model} "
                             f"(its base is {base.get('spec', 'unknown')!r})")
        lineages[method] = lineage
    return lineages


def resolve_data(args: argparse.Namespace, lineages: dict[str, list[dict[str, Any]]]) -> str:
    """--data, else the data the --from-run models were unlearned on, else the demo's default for the model."""
    from unpact_mech.demo import MODEL_DEFAULTS

    trained_on = {step.get("data") for lin in lineages.values() for step in lin if step.get("role") == "unlearned"}
    trained_on.discard(None)
    if len(trained_on) > 1:
        raise InputError(f"--from-run: the models were unlearned on different data ({', '.join(sorted(trained_on))})")
    data = args.data or next(iter(trained_on), None) or MODEL_DEFAULTS.get(args.model, {}).get("data", "builtin:real_facts")
    if trained_on and data not in trained_on:
        raise InputError(f"--data {data}: the --from-run models were unlearned on {next(iter(trained_on))}")
    return data


def check_out(out: Path) -> None:
    from unpact_mech.io import prepare_output_path

    if out.exists():
        kind = "a directory" if out.is_dir() else "a file"
        raise InputError(f"--out {out}: already exists ({kind}); give a new path (runs are never overwritten)")
    prepare_output_path(out)


# -- the context handed to a study -------------------------------------------------------------------------------
@dataclass
class Context:
    """The loaded original model, the items and the unlearned models of one study run; ``out`` is the (temporary)
    run directory the study writes its plots and extra files into."""

    study: Study
    args: argparse.Namespace
    out: Path
    data: str
    original: "HookedLM"
    items: list["QAItem"]
    argv: list[str] = field(default_factory=list)
    lineages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.args.seed)

    @property
    def progress(self) -> bool:
        return not self.args.quiet

    @property
    def n_boot(self) -> int:
        return int(self.args.n_boot)

    @property
    def methods(self) -> tuple[str, ...]:
        return used_methods(self.study, self.args.methods)

    def split(self, name: str) -> list["QAItem"]:
        return [it for it in self.items if it.split == name]

    def evaluate(self, model: "HookedLM", items: Sequence["QAItem"]) -> pd.DataFrame:
        """Greedy answers + judge + LP/rank (``evaluate_items``), one row per item."""
        from unpact_mech.scoring.evaluate import evaluate_items

        return evaluate_items(model, items, batch_size=BATCH_SIZE, max_new_tokens=MAX_NEW_TOKENS, progress=self.progress)

    @cached_property
    def original_evaluation(self) -> pd.DataFrame:
        """The original model's evaluation of every item (computed once)."""
        return self.evaluate(self.original, self.items)

    def attribute(self, model: "HookedLM", items: Sequence["QAItem"], label: str, method: str = "occlusion") -> "AttributionRun":
        """``method`` attribution of ``items``: word-level occlusion (the paper's score), or ``residual`` / ``attention``."""
        from unpact_mech.attribution.run import AttributionConfig, attribute_items

        cfg = AttributionConfig(method="occlusion", level="word", batch_size=OCCLUSION_BATCH) if method == "occlusion" \
            else AttributionConfig(method=method)
        return attribute_items(model, items, cfg, label=label, progress=self.progress)

    def keytokens(self, items: Sequence["QAItem"], run: "AttributionRun", alpha: float = 0.5, beta: int = 3) -> list["ItemKeywords"]:
        """KeyTokens (alpha/beta rule) of the ORIGINAL model's word-level occlusion ``run`` of ``items``, as keywords."""
        from unpact_mech.recovery.keywords import keywords_from_attribution
        from unpact_mech.scoring.tokens import encode_item

        encoded = [encode_item(self.original, it) for it in items]
        return keywords_from_attribution(encoded, run.units, alpha=alpha, beta=beta)

    def run_writer(self, command: str, config: dict[str, Any], lineage: Sequence[dict[str, Any]]) -> "RunWriter":
        from unpact_mech.io import RunWriter

        run = RunWriter(f"experiment:{self.study.name}" + (f"/{command}" if command else ""),
                        config=config, seed=self.seed, argv=[f"experiments/{self.study.name}.py", *self.argv])
        run.add_input("data", None if self.data.startswith("builtin:") else self.data)
        run.lineage = list(lineage)
        return run

    def unlearned(self) -> Iterator[tuple[str, "HookedLM"]]:
        """One unlearned model per method (loaded from --from-run or trained now), one at a time."""
        from tqdm.auto import tqdm

        for method in tqdm(self.methods, desc="methods", disable=not self.progress):
            model = self._load(method) if self.args.from_run else self._train(method)
            self.lineages[method] = list(model.lineage)
            yield method, model

    def _load(self, method: str) -> "HookedLM":
        from unpact_mech.models import load_model

        return load_model(Path(self.args.from_run) / "unlearned" / method, backend=self.args.backend)

    def _train(self, method: str) -> "HookedLM":
        """Unlearn a fresh copy with the demo's per-model overrides; write it to ``unlearned/<method>/``."""
        from unpact_mech.demo import MODEL_DEFAULTS, unlearn_fresh_copy

        model, _ = unlearn_fresh_copy(
            self.args.model, method, self.items, self.out / "unlearned", backend=self.args.backend, seed=self.seed,
            data_label=self.data, train_options=dict(MODEL_DEFAULTS.get(self.args.model, {}).get("train", {})),
            batch_size=BATCH_SIZE, max_new_tokens=MAX_NEW_TOKENS, progress=self.progress,
            run_writer=lambda config, lineage: self.run_writer("unlearn", config, lineage),
        )
        return model


def mean_ci(values: Sequence[float] | np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap 95% CI (resampling items; NaN if empty)."""
    from unpact_mech.recovery.metrics import bootstrap_ci

    x = np.asarray(values, dtype=float)
    if not x.size:
        return float("nan"), float("nan"), float("nan")
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return float(x.mean()), lo, hi


def paired_contrast(per_item: pd.DataFrame, a: str, b: str, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Two groups of units per item (``per_item``: ``item_id, group, before, after``, one row per item and group).

    Returns, per group g in (a, b), the macro means over items ``g_before``, ``g_after``, ``g_change`` (change =
    after - before), and over the items having both groups the paired difference of changes
    ``diff_change = mean_i[(a_after - a_before)_i - (b_after - b_before)_i]`` with a bootstrap CI over items."""
    row: dict[str, Any] = {}
    wide = per_item.assign(change=per_item["after"] - per_item["before"]).pivot_table(
        index="item_id", columns="group", values=["before", "after", "change"], aggfunc="mean")
    for g in (a, b):
        for col in ("before", "after", "change"):
            row[f"{g}_{col}"] = float(wide[(col, g)].mean()) if (col, g) in wide.columns else float("nan")
    changes = [("change", a), ("change", b)]
    diffs = (wide[changes[0]] - wide[changes[1]]).dropna().to_numpy() if set(changes) <= set(wide.columns) else np.array([])
    row["diff_change"], row["diff_change_ci_lo"], row["diff_change_ci_hi"] = mean_ci(diffs, n_boot=n_boot, seed=seed)
    row["n_paired"] = int(diffs.size)
    return row


def format_table(table: pd.DataFrame) -> str:
    """Terminal view: ``x``, ``x_ci_lo``, ``x_ci_hi`` columns shown as one ``x [lo, hi]`` column; 3 decimals."""
    view = table.copy()
    for col in [c for c in table.columns if f"{c}_ci_lo" in table.columns and f"{c}_ci_hi" in table.columns]:
        view[col] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(v) else "nan"
                     for v, lo, hi in zip(table[col], table[f"{col}_ci_lo"], table[f"{col}_ci_hi"])]
        view = view.drop(columns=[f"{col}_ci_lo", f"{col}_ci_hi"])
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def long_rows(frame: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str], **labels: Any) -> pd.DataFrame:
    """Wide -> long ``keys..., metric, value`` over ``metrics`` columns, plus constant ``labels`` columns."""
    out = frame.melt(id_vars=list(keys), value_vars=list(metrics), var_name="metric", value_name="value")
    return out.assign(**labels)


def grouped_bars(table: pd.DataFrame, x: str, bars: dict[str, str], path: Path, *, ylabel: str, title: str,
                 errors: dict[str, tuple[str, str]] | None = None, ylim: tuple[float, float] | None = None) -> Path:
    """Grouped bar chart: one group per row of ``table`` (labelled by column ``x``), one bar per ``bars`` entry
    (legend label -> column); ``errors`` maps a bar column to its (lo, hi) CI columns; ``ylim`` e.g. (0, 1) for rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unpact_mech.report.plots import save_figure

    n, k = len(table), len(bars)
    width = 0.8 / max(k, 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * n * k + 2.5), 3.4), layout="constrained")
    for j, (label, col) in enumerate(bars.items()):
        pos = np.arange(n) + (j - (k - 1) / 2) * width
        vals = table[col].to_numpy(float)
        err = None
        if errors and col in errors:
            lo, hi = (table[c].to_numpy(float) for c in errors[col])
            err = [np.clip(np.nan_to_num(vals - lo), 0, None), np.clip(np.nan_to_num(hi - vals), 0, None)]
        ax.bar(pos, np.nan_to_num(vals), width, yerr=err, capsize=3, label=label)
    ax.set_xticks(np.arange(n), [str(v) for v in table[x]], fontsize=8, rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(ylabel, fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# -- main --------------------------------------------------------------------------------------------------------
def _execute(study: Study, args: argparse.Namespace, argv: list[str]) -> Path:
    from unpact_mech.data import load_items
    from unpact_mech.demo import RUNS_DIR
    from unpact_mech.io import atomic_output_dir, atomic_write_text
    from unpact_mech.models import load_model
    from unpact_mech.runtime import seed_everything

    check_methods(args.methods)
    if args.from_run and not study.uses_from_run:
        raise InputError(f"--from-run: {study.name} trains its own checkpoints; it cannot reuse a demo's models")
    methods = used_methods(study, args.methods)
    from_run = Path(args.from_run).expanduser().absolute() if args.from_run else None
    lineages = run_lineages(from_run, methods, args.model) if from_run else {}
    data = resolve_data(args, lineages)
    items = load_items(data)
    if not any(it.split == "forget" for it in items):
        raise InputError(f"{data}: no forget items (\"split\": \"forget\")")
    out = Path(args.out) if args.out else default_out(study.name, args.model)
    if args.out is None:  # the last check: a bad input never leaves an empty unpact-runs/ behind
        RUNS_DIR.mkdir(exist_ok=True)
    check_out(out)
    seed_everything(args.seed)
    with atomic_output_dir(out) as tmp:
        original = load_model(args.model, backend=args.backend)
        ctx = Context(study, args, tmp, data, original, items, argv)
        result = study.run(ctx)
        config = vars(args) | {"data": data, "from_run": str(from_run) if from_run else None, "methods": list(methods),
                               "lineages": ctx.lineages, "batch_size": BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS}
        run = ctx.run_writer("", config, _flat_lineage(original.lineage, ctx.lineages))
        for method in methods if from_run else ():
            weights = from_run / "unlearned" / method / "model.safetensors"
            run.add_input(f"unlearned/{method}", weights if weights.is_file() else from_run / "unlearned" / method)
        table = result.table.reset_index(drop=True)
        summary = {"study": study.name, "model": args.model, "data": data, "methods": list(methods), "seed": args.seed,
                   "table": table.to_dict("records")} | result.summary
        run.write(tmp, result.results, summary)
        atomic_write_text(tmp / "table.csv", table.to_csv(index=False))
    print(format_table(table))
    print(f"\noutput: {out}")
    return out


def _flat_lineage(base: Sequence[dict[str, Any]], lineages: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The base model's lineage, then every later step of each unlearned model (``base -> unlearned`` per method)."""
    steps = list(base)
    for lineage in lineages.values():
        steps += lineage[1:]
    return steps


def main(study: Study, argv: Sequence[str] | None = None) -> int:
    """Run ``study`` with command-line ``argv``; bad input -> one line on stderr and exit code 2, nothing written."""
    from unpact_mech.runtime import offline_and_quiet

    offline_and_quiet()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(study).parse_args(argv)
    try:
        _execute(study, args, argv)
    except InputError as err:
        print(f"{study.name}.py: error: {err}", file=sys.stderr)
        return 2
    return 0
