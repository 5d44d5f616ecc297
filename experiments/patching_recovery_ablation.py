"""Patching ablation — at which layers and positions does activation emphasis bring forgotten answers back?

Per unlearning method, on its eligible forget items E (original right, unlearned wrong), with the ORIGINAL model's
KeyTokens as keywords (word-level occlusion, alpha = 0.5, beta = 3): for each intervention (``patch`` = copy the
original model's residual stream, ``scale`` = multiply the residual stream by 2), each position group (the
keywords, ALL other question tokens, a random subset of the other question tokens of the same size as the keywords —
the size-matched control —, the last prompt token) and each layer L, applied at layer L only (``single``)
or at layers 0..L (``cumulative``): the recovery rate ``R = |{i in E : correct}| / |E|``, the top-1 rate of the
gold first token and the mean LP gain. The table summarises each (method, intervention, group, mode) curve: the
best layer and its rate, the mean rate over layers and the rate at the last layer swept; the full sweep is in
``results.csv`` and ``sweep.csv``, one figure shows every curve.
"""

from __future__ import annotations

import sys

import pandas as pd

from unpact_mech.pipeline.study import Context, Study, StudyResult, main

KEYS = ["method", "intervention", "group", "mode"]


def add_options(p) -> None:
    from unpact_mech.commands.common import positive_int

    p.add_argument(
        "--points",
        type=positive_int,
        default=4,
        metavar="N",
        help="layers swept: N evenly spaced, first and last included (default: 4; all if the model has fewer)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["cumulative"],
        choices=["single", "cumulative"],
        help="intervene at layer L only, and/or at layers 0..L (default: cumulative, ~8 min on SmolLM2 with "
        "two methods; both modes take twice as long)",
    )


def eligible(ctx: Context, model, forget) -> list[int]:
    """Indices of the forget items the original answers correctly and ``model`` does not."""
    from unpact_mech.recovery.metrics import eligible_for_recovery

    ids = [it.id for it in forget]
    known = ctx.original_evaluation.set_index("item_id").loc[ids, "correct"].to_numpy(bool)
    after = ctx.evaluate(model, forget).set_index("item_id").loc[ids, "correct"].to_numpy(bool)
    return [i for i, ok in enumerate(eligible_for_recovery(known, after)) if ok]


def summarise(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per curve: best layer (lowest on ties), its rate, mean rate and the rate at the last layer."""
    rows = []
    for key, curve in sweep.groupby(KEYS, sort=False):
        curve = curve.sort_values("layer")
        best = curve.loc[curve["recovery_rate"].idxmax()]
        rows.append(
            dict(zip(KEYS, key))
            | {
                "n_eligible": int(curve["n"].iloc[0]),
                "best_layer": int(best["layer"]),
                "best_recovery_rate": float(best["recovery_rate"]),
                "mean_recovery_rate": float(curve["recovery_rate"].mean()),
                "last_layer_recovery_rate": float(curve["recovery_rate"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


def run(ctx: Context) -> StudyResult:
    from unpact_mech.io import atomic_write_text
    from unpact_mech.recovery.ablation import SweepConfig, default_sweep_layers, layer_sweep
    from unpact_mech.report.recovery_plots import plot_layer_sweep

    forget = ctx.split("forget")
    keywords = ctx.original_keywords(forget)
    layers = default_sweep_layers(ctx.original.shape.n_layers, ctx.args.points)
    cfg = SweepConfig(
        interventions=("patch", "scale"),
        modes=tuple(ctx.args.modes),
        layers=layers,
        batch_size=ctx.batch_size,
        max_new_tokens=ctx.max_new_tokens,
        seed=ctx.seed,
    )
    sweeps, empty = [], []
    for method, model in ctx.unlearned():
        idx = eligible(ctx, model, forget)
        if not idx:
            empty.append(method)
            continue
        sweep = layer_sweep(
            ctx.original, model, [forget[i] for i in idx], [keywords[i] for i in idx], cfg, progress=ctx.progress
        )
        sweeps.append(sweep.assign(method=method))
    sweep = (
        pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame(columns=KEYS + ["layer", "recovery_rate", "n"])
    )
    table = summarise(sweep)
    if empty:  # methods without eligible items: nothing to recover
        table = pd.concat([table, pd.DataFrame({"method": empty, "n_eligible": 0})], ignore_index=True)
    if len(sweep):
        curves = sweep.assign(curve=sweep["method"] + " · " + sweep["intervention"])
        plot_layer_sweep(curves, ctx.out / "layer_sweep.png", title="Recovery by layer and position group", by="curve")
    atomic_write_text(ctx.out / "sweep.csv", sweep.to_csv(index=False))
    long = sweep.melt(
        id_vars=KEYS + ["layer", "layers", "n"],
        value_vars=["recovery_rate", "top1_rate", "mean_logprob_gain"],
        var_name="metric",
    ).assign(item_id="eligible", split="forget")
    return StudyResult(table, long, {"no_eligible_items": empty})


STUDY = Study("patching_recovery_ablation", __doc__, run, add_options)

if __name__ == "__main__":
    sys.exit(main(STUDY))
