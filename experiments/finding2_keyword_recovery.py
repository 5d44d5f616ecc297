"""Finding 2 — emphasising the keywords brings forgotten answers back, with no weight change.

Keywords = the ORIGINAL model's KeyTokens (word-level occlusion, alpha = 0.5, beta = 3), computed once and shared by
every method. Per unlearning method, every prompt strategy (instruction listing the keywords, repetition, quoting,
upper-casing, keyword-first, and the neutral-instruction control) and the four default activation interventions at
the keyword positions (scale, patch from the original, steer, PASTA-style attention reweighting). Recovery rate
``R = |{i in E : correct under emphasis}| / |E|`` over the eligible forget items E (original right, unlearned
wrong), with its exact (Clopper–Pearson) 95% interval; beside it the controls: the same emphasis on random
non-keyword words (prompt) or token positions (activations, same token count), with the exact McNemar p-value
against it on the same items (and Holm-adjusted over the 11 conditions), the McNemar p-value against the neutral
instruction, the same emphasis on the original model (accuracy before -> after) and on the held-out utility items
(unlearned accuracy before -> after), and whether the gold first token becomes top-1. Each method's full recovery
output is also written to ``recovery/<method>/``.
"""

from __future__ import annotations

import sys

import pandas as pd

from unpact_mech.pipeline.presets import MAX_CONTROL_ITEMS
from unpact_mech.pipeline.study import Context, Study, StudyResult, main
from unpact_mech.pipeline.tables import grouped_bars

COLUMNS = [
    "method",
    "kind",
    "condition",
    "n_eligible",
    "recovery_rate",
    "ci_low",
    "ci_high",
    "random_control_rate",
    "p_vs_random",
    "p_vs_random_holm",
    "p_vs_neutral",
    "original_accuracy_before",
    "original_accuracy_after",
    "utility_accuracy_before",
    "utility_accuracy_after",
    "top1_before",
    "top1_after",
]


def add_options(p) -> None:
    from unpact_mech.commands.common import positive_int

    p.add_argument(
        "--max-control-items",
        type=positive_int,
        default=MAX_CONTROL_ITEMS,
        metavar="N",
        help=f"items in the original-model and retain controls (seeded sample; default: {MAX_CONTROL_ITEMS})",
    )


def run(ctx: Context) -> StudyResult:
    from unpact_mech.attacks import DEFAULT_ATTACKS
    from unpact_mech.recovery.outputs import long_results

    keywords = ctx.original_keywords()
    rcfg = ctx.recovery_config(DEFAULT_ATTACKS, max_control_items=ctx.args.max_control_items)
    tables, long, summaries = [], [], {}
    for method, model in ctx.unlearned():
        rec = ctx.recover(model, method, rcfg, keywords)
        tables.append(rec.rates.assign(method=method).reindex(columns=COLUMNS))
        long.append(long_results(rec).assign(method=method))
        summaries[method] = {
            k: rec.summary.get(k)
            for k in (
                "n_eligible",
                "utility_destructive_rate",
                "best_of",
                "best_condition",
                "best_recovery_rate",
                "best_p_vs_random_holm",
            )
        }
    table = pd.concat(tables, ignore_index=True)
    plot(table, ctx)
    return StudyResult(table, pd.concat(long, ignore_index=True), {"recovery": summaries})


def plot(table: pd.DataFrame, ctx: Context) -> None:
    """Recovery rate per condition (x) and method (bars), with bootstrap CIs."""
    wide = table.pivot_table(
        index="condition",
        columns="method",
        values=["recovery_rate", "ci_low", "ci_high"],
        sort=False,
    )
    wide.columns = [f"{m}:{v}" for v, m in wide.columns]
    wide = wide.reset_index()
    methods = list(dict.fromkeys(table["method"]))
    grouped_bars(
        wide,
        "condition",
        {m: f"{m}:recovery_rate" for m in methods},
        ctx.out / "recovery_rates.png",
        errors={f"{m}:recovery_rate": (f"{m}:ci_low", f"{m}:ci_high") for m in methods},
        ylabel="recovery rate (eligible forget items)",
        ylim=(0, 1.02),
        title="Recovery by keyword emphasis (95% CI)",
    )


STUDY = Study("finding2_keyword_recovery", __doc__, run, add_options)

if __name__ == "__main__":
    sys.exit(main(STUDY))
