"""Is it really gone? Every unlearning method against the whole recovery battery, with calibrated controls.

Per unlearning method (default: the nine baselines and keyguard, each unlearned from a fresh copy with its recipe,
or loaded with ``--from-run``), every condition of ``--attacks`` (default ``all``: the battery of
``unpact_mech/attacks/battery.py`` — keyword emphasis in the prompt and the activations, quantization to the source
grid and uniform grids, relearning on unrelated items and on the other fold of the forget items, the logit lens,
cross-fitted direction ablation, few-shot prompts and offline rephrasings) through the recovery runner: the recovery
rate on the eligible forget items (original right, unlearned wrong) with its exact interval, the same attack on the
original model (its accuracy under the attack), on held-out utility items (collateral), the matched control where
the condition has one (random words / positions / direction) with the exact McNemar p-value, and the share of the
forget-set gap the attack closes, (acc_attacked - acc_unlearned) / (acc_original - acc_unlearned). Keywords for the
emphasis conditions: the original's KeyTokens, computed once. The original's baseline answers are computed once
and reused by every method.

Outputs: ``table.csv`` (one row per method: forget / utility accuracy, the worst case over the battery and per
family, each with the condition named and the number of conditions it is the maximum of), ``rates.csv`` (method x
condition, every column of the runner), ``worst_by_family.csv``, ``is_it_gone.png`` (heatmap, methods x conditions),
``recovery/<method>/`` (the ``unpact recover`` files, details/ included: logit lens per layer, depth curve,
quantization grid, relearning losses, the fictional-facts control of relearn_split).

Resuming: ``--resume-from DIR`` takes every method whose ``DIR/recovery/<method>/`` holds a finished recovery run
with the same conditions, seed, data and control sample size (DIR: an earlier run of this script, finished or the
``.tmp-*`` directory an interrupted one left) and copies it instead of computing it again; the other methods run.

    python experiments/is_it_gone.py --out runs/is_it_gone
    python experiments/is_it_gone.py --methods ga_gdr npo_gdr --from-run runs/demo --attacks all --out runs/gone2
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from unpact_mech.errors import InputError
from unpact_mech.pipeline.presets import MAX_CONTROL_ITEMS
from unpact_mech.pipeline.study import Context, Study, StudyResult, main

if TYPE_CHECKING:
    from unpact_mech.attacks import Attack

METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo", "rmu", "task_vector", "keyguard")
RATE_COLUMNS = [
    "method", "kind", "family", "condition", "is_control", "n_eligible", "recovered", "recovery_rate", "ci_low",
    "ci_high", "random_control_rate", "p_vs_random", "p_vs_random_holm", "original_accuracy_before",
    "original_accuracy_after", "utility_accuracy_before", "utility_accuracy_after", "forget_accuracy_original",
    "forget_accuracy_unlearned", "forget_accuracy_after", "gap_fraction",
]  # fmt: skip


def add_options(p) -> None:
    from unpact_mech.commands.common import positive_int

    p.add_argument(
        "--attacks",
        nargs="+",
        default=["all"],
        metavar="SPEC",
        help="conditions (registered names / spec strings, as `unpact recover --attack`; default: all; 'battery': "
        "all but the keyword-emphasis conditions)",
    )
    p.add_argument(
        "--resume-from",
        default=None,
        metavar="DIR",
        help="reuse the finished recovery/<method>/ runs of an earlier (or interrupted) run of this script with the "
        "same conditions, seed, data and --max-control-items",
    )
    p.add_argument(
        "--max-control-items",
        type=positive_int,
        default=MAX_CONTROL_ITEMS,
        metavar="N",
        help=f"items in the original-model and utility controls (seeded sample; default: {MAX_CONTROL_ITEMS})",
    )


def worst_rows(method: str, worst: dict[str, dict]) -> list[dict]:
    """``worst_case_by_family`` of one run as rows (method, family, condition, rate, interval, of)."""
    return [{"method": method, "family": family} | w for family, w in worst.items()]


def resumable(ctx: Context, attacks: list["Attack"]) -> dict[str, Path]:
    """Method -> its finished recovery directory under ``--resume-from`` when that run asked the same conditions
    (in order, every setting equal: :meth:`~unpact_mech.attacks.base.Attack.settings`) with the same seed, data and
    control sample (read from its ``run.json``); the others are left out."""
    if not ctx.args.resume_from:
        return {}
    root = Path(ctx.args.resume_from)
    if not root.is_dir():
        raise InputError(f"--resume-from {root}: not a directory")
    found = {}
    for method in ctx.methods:
        d = root / "recovery" / method
        if not all((d / f).is_file() for f in ("rates.csv", "per_item.csv", "summary.json", "run.json")):
            continue
        record = json.loads((d / "run.json").read_text())
        config = record.get("config", {})
        same = (
            config.get("attack_settings") == [a.settings() for a in attacks]
            and record.get("seed") == ctx.seed and config.get("data") == ctx.data
            and config.get("max_control_items") == ctx.args.max_control_items
            and config.get("max_new_tokens") == ctx.max_new_tokens
        )  # fmt: skip
        if same:
            found[method] = d
    return found


def run(ctx: Context) -> StudyResult:
    from unpact_mech.attacks import resolve_attacks
    from unpact_mech.attacks.battery import expand_specs
    from unpact_mech.recovery.outputs import long_results, read_recovery
    from unpact_mech.recovery.worst_case import top_condition
    from unpact_mech.report.recovery_plots import battery_matrix, plot_battery_heatmap

    attacks = resolve_attacks(expand_specs(list(ctx.args.attacks), ctx.original), ctx.original)  # errors first
    done = resumable(ctx, attacks)
    todo = [m for m in ctx.methods if m not in done]
    keywords = ctx.original_keywords() if todo and any(a.uses_keywords for a in attacks) else None
    rcfg = ctx.recovery_config(attacks, max_control_items=ctx.args.max_control_items)
    rates, long, worst, table = [], [], [], []
    models = ctx.unlearned(todo)
    for method in ctx.methods:
        if method in done:
            shutil.copytree(done[method], ctx.out / "recovery" / method)
            ctx.lineages[method] = json.loads((done[method] / "run.json").read_text())["lineage"][:-1]
            rec, model = read_recovery(done[method]), None
            print(f"is_it_gone: {method}: reused {done[method]}", file=sys.stderr)
        else:
            _, model = next(models)
            rec = ctx.recover(model, method, rcfg, keywords)
        rates.append(rec.rates.assign(method=method).reindex(columns=RATE_COLUMNS))
        long.append(long_results(rec).assign(method=method))
        worst.append(pd.DataFrame(worst_rows(method, rec.summary["worst_case_by_family"])))
        top = top_condition(rec.rates)
        row = {
            "method": method,
            "forget_acc": rec.summary.get("unlearned_forget_accuracy"),
            "utility_acc": rec.summary.get("unlearned_utility_accuracy"),
            "eligible": rec.summary.get("n_eligible"),
            "worst_case": top["condition"],
            "worst_rate": top.get("rate"),
            "worst_ci_low": top.get("ci_low"),
            "worst_ci_high": top.get("ci_high"),
            "worst_original_after": top.get("original_after"),
            "worst_gap_fraction": top.get("gap_fraction"),
            "of": top["of"],
        }
        for family, w in rec.summary["worst_case_by_family"].items():
            row[f"worst_{family}"] = w["rate"]
        table.append(row)
        del model
    rates_table = pd.concat(rates, ignore_index=True)
    rates_table.to_csv(ctx.out / "rates.csv", index=False)
    pd.concat(worst, ignore_index=True).to_csv(ctx.out / "worst_by_family.csv", index=False)
    matrix = battery_matrix(dict(list(rates_table.groupby("method", sort=False))))
    plot_battery_heatmap(matrix, ctx.out / "is_it_gone.png", title=f"Is it really gone? ({ctx.spec})")
    grid = source_grid_check(ctx, [a.label for a in attacks])
    return StudyResult(pd.DataFrame(table), pd.concat(long, ignore_index=True), grid)


def source_grid_check(ctx: Context, labels: list[str]) -> dict:
    """Whether the ORIGINAL model re-quantized to its source file's own types (the condition ``quantize[source]``)
    holds bit for bit the original's weights: the embedded SmolLM2 lies on its GGUF grid, so any recovery under
    that condition is unlearning undone by rounding alone. Empty when the condition is not in ``labels``."""
    import torch

    from unpact_mech.attacks.quantize import named_weights, quantized_copy

    if "quantize[source]" not in labels:
        return {}
    before, after = named_weights(ctx.original), named_weights(quantized_copy(ctx.original, "source"))
    equal = [torch.equal(before[n], after[n]) for n in before]
    return {"source_grid_roundtrip": {"tensors": len(equal), "bitwise_equal": int(sum(equal))}}


STUDY = Study(
    "is_it_gone",
    __doc__.split("\n\n")[0] + " Writes table.csv, rates.csv, worst_by_family.csv, is_it_gone.png, recovery/<method>/.",
    run,
    add_options,
    default_methods=METHODS,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
