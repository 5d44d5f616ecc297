"""Is it gone, or only off the grid? Re-quantize a demo's unlearned models and ask the forgotten questions again.

For each unlearned model ``DIR/unlearned/<method>/`` of an ``unpact demo`` run and each ``--schemes`` entry, the
``quantize`` condition (``unpact_mech/attacks/quantize.py``): the recovery rate on the eligible forget items (original
right, unlearned wrong) with its exact interval, the same rounding applied to the ORIGINAL model (its accuracy on
sampled forget items before -> after: a grid that costs the original its answers cannot be credited with bringing
them back) and to the unlearned model on sampled utility items. ``grid.csv``: per method and quantized tensor, how
far unlearning moved the weights against the bin width and the share that quantize back to the original's grid
point (``scheme=source`` only: the embedded SmolLM2's own Q4_1/Q8_0 grid).

    python experiments/quantization_probe.py --from-run runs/demo --out runs/quantization_probe

Outputs (a new ``--out`` directory, written at the end in one piece): ``rates.csv`` (method x scheme, the recovery
runner's columns), ``grid.csv``, ``run.json``. Exit 2 with one line for bad input (missing run, a scheme the model
cannot take) before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from unpact_mech.commands.common import add_backend_option

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", required=True, metavar="DIR", help="an `unpact demo` run directory")
    parser.add_argument(
        "--model",
        default=None,
        help="the original model (default: the base model the run's models were unlearned from)",
    )
    parser.add_argument("--data", default=None, help="QA items (default: the model's built-in facts)")
    parser.add_argument(
        "--schemes", nargs="+", default=["source", "int8", "int4"], help="quantize schemes (default: source int8 int4)"
    )
    parser.add_argument("--max-control-items", type=int, default=16, help="items of the original / utility controls")
    parser.add_argument("--seed", type=int, default=0)
    add_backend_option(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist)")
    args = parser.parse_args(argv)

    from unpact_mech.errors import InputError

    try:
        return run(args)
    except InputError as err:
        print(f"quantization_probe: {err}", file=sys.stderr)
        return 2


def base_spec(model_dir: Path) -> str:
    """The spec of the model an unlearned model directory was made from (its recorded lineage's base)."""
    from unpact_mech.models.loading import resolve_spec

    return str(resolve_spec(model_dir).lineage[0].get("spec", "smollm2"))


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from unpact_mech import load_items, load_model
    from unpact_mech.attacks import get_attack
    from unpact_mech.attacks.quantize import grid_report
    from unpact_mech.commands.common import model_kwargs
    from unpact_mech.errors import InputError
    from unpact_mech.io import atomic_output_dir, run_record, write_json
    from unpact_mech.pipeline.presets import default_data
    from unpact_mech.recovery import RecoveryConfig, run_recovery
    from unpact_mech.runtime import seed_everything

    unlearned_dir = Path(args.from_run) / "unlearned"
    methods = sorted(p.name for p in unlearned_dir.iterdir() if p.is_dir()) if unlearned_dir.is_dir() else []
    if not methods:
        raise InputError(f"--from-run {args.from_run}: no unlearned/<method>/ models (give an `unpact demo` run)")
    out = Path(args.out)
    if out.exists():
        raise InputError(f"--out {out}: already exists")
    args.model = args.model or base_spec(unlearned_dir / methods[0])
    seed_everything(args.seed)
    original = load_model(args.model, **model_kwargs(args))
    attacks = [get_attack(f"quantize:scheme={s}").resolve(original) for s in args.schemes]  # bad schemes fail here
    items = load_items(args.data or default_data(args.model))
    rates, grids = [], []
    for method in methods:
        unlearned = load_model(unlearned_dir / method, **model_kwargs(args))
        if "source" in args.schemes:
            grids.append(grid_report(original, unlearned, "source").assign(method=method))
        cfg = RecoveryConfig(
            attacks=attacks, keyword_source="data", max_control_items=args.max_control_items, seed=args.seed
        )
        result = run_recovery(original, unlearned, items, cfg, progress=True)
        rates.append(result.rates.assign(method=method))
    table = pd.concat(rates, ignore_index=True)
    record = run_record(
        "quantization_probe", config=vars(args), seed=args.seed, data=args.data or default_data(args.model),
        argv=sys.argv, models={"original": original},
    )  # fmt: skip
    with atomic_output_dir(out) as tmp:
        table.to_csv(tmp / "rates.csv", index=False)
        if grids:
            pd.concat(grids, ignore_index=True).to_csv(tmp / "grid.csv", index=False)
        write_json(tmp / "run.json", record.metadata())
    cols = ["method", "condition", "recovered", "n_eligible", "recovery_rate", "ci_low", "ci_high",
            "original_accuracy_before", "original_accuracy_after",
            "utility_accuracy_before", "utility_accuracy_after"]  # fmt: skip
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\noutput: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
