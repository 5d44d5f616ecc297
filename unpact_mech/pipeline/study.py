"""Experiment scripts as thin sequences of the pipeline stages: the shared command line, checks and run directory.

A script in ``experiments/`` defines a :class:`Study` (its name, a one-paragraph description, ``run(ctx)``) and
calls :func:`main`, which

1. parses the common options (``--model --methods --from-run --data --out --seed --backend --n-boot --quiet`` plus
   the study's own) and checks everything cheap first (unknown method, ``--from-run`` without the needed
   ``unlearned/<method>`` model directories, an ``--out`` that exists) -> one line on stderr, exit 2, nothing written;
2. loads the original model and the items and hands the study a :class:`Context` — a
   :class:`~unpact_mech.pipeline.session.Session` that also yields one unlearned model per method, loaded from
   ``--from-run DIR/unlearned/<method>`` (a demo run) or unlearned from a fresh copy with the per-model presets (then
   written to ``unlearned/<method>/`` with its lineage);
3. writes the run directory atomically: ``run.json`` (command ``experiment:<name>``, config, seed, versions, lineage
   base -> unlearned of every model used), ``results.csv`` (long), ``summary.json`` (``"table"``: the headline table
   as row dicts) and ``table.csv``; the study adds its plots; prints the headline table and the output path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from unpact_mech.errors import InputError
from unpact_mech.pipeline.presets import DEFAULT_METHODS, default_data, train_overrides
from unpact_mech.pipeline.session import Session

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


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

    def used_methods(self, methods: Sequence[str]) -> tuple[str, ...]:
        return tuple(methods[:1]) if self.first_method_only else tuple(methods)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser(study: Study) -> argparse.ArgumentParser:
    from unpact_mech.commands.common import add_backend_option, add_seed_option, positive_int

    p = _Parser(
        prog=f"{study.name}.py", description=study.description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default="smollm2", metavar="SPEC", help="smollm2 (default), tiny, or a local HF model directory"
    )
    p.add_argument(
        "--methods",
        nargs="*" if study.methods_optional else "+",
        default=list(study.default_methods),
        metavar="METHOD",
        help=f"unlearning methods (default: {' '.join(study.default_methods)})",
    )
    p.add_argument(
        "--from-run",
        default=None,
        metavar="DIR",
        help="reuse the unlearned models DIR/unlearned/<method>/ of an earlier `unpact demo` run "
        "(default: unlearn a fresh copy per method)"
        if study.uses_from_run
        else argparse.SUPPRESS,
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="QA items (default: the --from-run models' data, else builtin:synthetic_facts for tiny and "
        "builtin:real_facts otherwise)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=f"run directory to create; must not exist (default: unpact-runs/{study.name}-MODEL-TIMESTAMP)",
    )
    add_seed_option(p)
    add_backend_option(p)
    p.add_argument(
        "--n-boot", type=positive_int, default=1000, help="bootstrap resamples for mean-difference CIs (default: 1000)"
    )
    p.add_argument(
        "--target",
        default="auto",
        choices=["auto", "answer", "answer_in_context", "first_logit"],
        help="what attribution attributes (KeyTokens included): answer = the bare answer after the prompt (the "
        "paper's), answer_in_context = the answer inside the original's own sentence; auto (default) = "
        "answer_in_context for chat-format prompts",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if study.add_options is not None:
        study.add_options(p)
    return p


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
            raise InputError(
                f"--from-run {from_run}: no unlearned/{method} model directory "
                f"(it has: {', '.join(available) or 'none'})"
            )
        lineage = resolve_spec(path).lineage
        base = lineage[0] if lineage else {}
        same = base.get("spec") == model or (
            base.get("path") and Path(base["path"]).resolve() == Path(model).expanduser().resolve()
        )
        if len(lineage) < 2 or not same:
            raise InputError(
                f"--from-run {path}: not a model unlearned from --model {model} "
                f"(its base is {base.get('spec', 'unknown')!r})"
            )
        lineages[method] = lineage
    return lineages


def resolve_data(args: argparse.Namespace, lineages: dict[str, list[dict[str, Any]]]) -> str:
    """--data, else the data the --from-run models were unlearned on, else the preset for the model."""
    trained_on = {step.get("data") for lin in lineages.values() for step in lin if step.get("role") == "unlearned"}
    trained_on.discard(None)
    if len(trained_on) > 1:
        raise InputError(f"--from-run: the models were unlearned on different data ({', '.join(sorted(trained_on))})")
    data = args.data or next(iter(trained_on), None) or default_data(args.model)
    if trained_on and data not in trained_on:
        raise InputError(f"--data {data}: the --from-run models were unlearned on {next(iter(trained_on))}")
    return data


@dataclass
class Context(Session):
    """A :class:`Session` plus the script's ``study`` and parsed ``args``."""

    study: Study | None = None
    args: argparse.Namespace = field(default_factory=argparse.Namespace)

    @property
    def n_boot(self) -> int:
        return int(self.args.n_boot)

    @property
    def methods(self) -> tuple[str, ...]:
        assert self.study is not None
        return self.study.used_methods(self.args.methods)

    def split(self, name: str) -> list:
        from unpact_mech.data.splits import split_items

        return split_items(self.items, name)

    def unlearned(self, methods: Sequence[str] | None = None) -> Iterator[tuple[str, "HookedLM"]]:
        """One unlearned model per method (loaded from --from-run or trained now), one at a time (``methods``: only
        these of the study's methods, e.g. those a resumed run still lacks)."""
        from unpact_mech.utils import progress_bar

        chosen = self.methods if methods is None else [m for m in self.methods if m in set(methods)]
        for method in progress_bar(chosen, enabled=self.progress, desc="methods"):
            if self.args.from_run:
                model = self.load(Path(self.args.from_run) / "unlearned" / method)
                self.lineages[method] = list(model.lineage)
            else:
                model, _ = self.unlearn_fresh_copy(method, train_overrides(self.spec, method))
            yield method, model


def _execute(study: Study, args: argparse.Namespace, argv: list[str]) -> Path:
    from unpact_mech.data import FORGET, load_items, require_split
    from unpact_mech.io import atomic_output_dir, atomic_write_text
    from unpact_mech.models import load_model
    from unpact_mech.pipeline.checks import check_methods
    from unpact_mech.pipeline.rundir import new_run_dir
    from unpact_mech.pipeline.tables import format_table
    from unpact_mech.runtime import seed_everything

    if args.methods or not study.methods_optional:
        check_methods(args.methods)
    if args.from_run and not study.uses_from_run:
        raise InputError(f"--from-run: {study.name} trains its own checkpoints; it cannot reuse a demo's models")
    methods = study.used_methods(args.methods)
    from_run = Path(args.from_run).expanduser().absolute() if args.from_run else None
    lineages = run_lineages(from_run, methods, args.model) if from_run else {}
    data = resolve_data(args, lineages)
    items = load_items(data)
    require_split(items, FORGET, data)
    out, _ = new_run_dir(args.out, args.model, prefix=study.name)
    seed_everything(args.seed)
    with atomic_output_dir(out) as tmp:
        original = load_model(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
        ctx = Context(
            args.model,
            data,
            items,
            original,
            tmp,
            seed=args.seed,
            backend=args.backend,
            device=args.device,
            dtype=args.dtype,
            progress=not args.quiet,
            target=args.target,
            command=f"experiment:{study.name}",
            argv=[f"experiments/{study.name}.py", *argv],
            study=study,
            args=args,
        )
        result = study.run(ctx)
        config = {k: v for k, v in vars(args).items() if not callable(v)} | {
            "data": data,
            "from_run": str(from_run) if from_run else None,
            "methods": list(methods),
            "lineages": ctx.lineages,
            "batch_size": ctx.batch_size,
            "max_new_tokens": ctx.max_new_tokens,
        }
        run = ctx.record(ctx.command, config, ctx.lineage())
        for method in methods if from_run else ():
            weights = from_run / "unlearned" / method / "model.safetensors"
            run.add_input(f"unlearned/{method}", weights if weights.is_file() else from_run / "unlearned" / method)
        table = result.table.reset_index(drop=True)
        from unpact_mech.attribution.targets import get_target

        summary = {
            "study": study.name,
            "target": get_target(args.target, original).name,
            "model": args.model,
            "data": data,
            "methods": list(methods),
            "seed": args.seed,
            "table": table.to_dict("records"),
        } | result.summary
        run.write(tmp, result.results, summary)
        atomic_write_text(tmp / "table.csv", table.to_csv(index=False))
    print(format_table(table))
    print(f"\noutput: {out}")
    return out


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
