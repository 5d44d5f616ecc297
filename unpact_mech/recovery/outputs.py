"""Write a recovery result into a directory (shared by ``unpact recover`` and the demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from unpact_mech.io import RunWriter, atomic_write_text
from unpact_mech.recovery.run import RecoveryResult


def long_results(result: RecoveryResult) -> pd.DataFrame:
    """``item_id, split, metric, value, model, kind, condition, emphasis, arm, generation`` for correct / logprob /
    rank / truncated (the greedy answer next to its scores)."""
    ids = ["item_id", "split", "model", "kind", "condition", "emphasis", "arm", "generation"]
    long = result.per_item.melt(
        id_vars=ids, value_vars=["correct", "logprob", "rank", "truncated"], var_name="metric", value_name="value"
    )
    return long[["item_id", "split", "metric", "value", *ids[2:]]]


def safe_name(label: str) -> str:
    """A condition label as a file name: ``quantize[int4/g32]`` -> ``quantize[int4_g32]``."""
    return "".join(ch if ch.isalnum() or ch in "[]-_.=+" else "_" for ch in label)


def write_recovery(
    out_dir: str | Path, result: RecoveryResult, run: RunWriter, summary: dict, sweep: pd.DataFrame | None = None
) -> None:
    """run.json, results.csv, summary.json, rates.csv, per_item.csv, keywords.csv, plots (+ ablation), and the
    conditions' detail tables as ``details/<condition>.<name>.csv`` (e.g. the logit lens per layer)."""
    from unpact_mech.report.recovery_plots import plot_layer_sweep, plot_recovery_rates

    out = Path(out_dir)
    run.write(out, long_results(result), summary)
    atomic_write_text(out / "rates.csv", result.rates.to_csv(index=False))
    atomic_write_text(out / "per_item.csv", result.per_item.to_csv(index=False))
    atomic_write_text(out / "keywords.csv", result.keywords.to_csv(index=False))
    if result.details:
        (out / "details").mkdir(exist_ok=True)
    index = {}
    for (condition, name), table in result.details.items():
        file = f"{safe_name(condition)}.{name}.csv"
        atomic_write_text(out / "details" / file, table.to_csv(index=False))
        index[file] = [condition, name]
    if index:
        atomic_write_text(out / "details" / "index.json", json.dumps(index, indent=1))
    if len(result.rates):
        plot_recovery_rates(result.rates, out / "recovery_rates.png")
    if sweep is not None:
        atomic_write_text(out / "ablation.csv", sweep.to_csv(index=False))
        if len(sweep):
            plot_layer_sweep(sweep, out / "ablation.png")


def read_recovery(run_dir: str | Path) -> RecoveryResult:
    """A :class:`RecoveryResult` read back from a directory :func:`write_recovery` wrote (the tables, the summary, the
    eligible items and the detail tables; ``attacks`` and ``item_keywords`` stay empty: the conditions are named in
    ``rates``). For resuming a study without recomputing a finished run."""
    from unpact_mech.recovery.compare import eligible_ids

    d = Path(run_dir)
    per_item = pd.read_csv(d / "per_item.csv")
    index = d / "details" / "index.json"
    details = {
        (condition, name): pd.read_csv(d / "details" / file)
        for file, (condition, name) in (json.loads(index.read_text()).items() if index.is_file() else ())
    }
    return RecoveryResult(
        per_item, pd.read_csv(d / "rates.csv"), pd.read_csv(d / "keywords.csv"),
        json.loads((d / "summary.json").read_text()), eligible_ids=eligible_ids(per_item), details=details,
    )  # fmt: skip
