"""KeyToken α/β sweep — the ablation the paper lacked: how do α and β change which words are KeyTokens?

Word-level occlusion of every item on the ORIGINAL model, once. For α in ALPHAS × β in BETAS, KeyTokens by the
paper's rule (positive contributions only; all of them if fewer than β; else those with C / max C >= α), compared
with the data's annotated ``keywords`` over the items that have some: ``keytoken_hit_rate`` = share of items with at
least one KeyToken among their keywords; ``keyword_precision`` = mean |KeyTokens ∩ keywords| / |KeyTokens|;
``keyword_recall`` = mean |KeyTokens ∩ keywords| / |keywords|; ``mean_keytokens_per_item``; and
``top_word_hit_rate`` (the top-scoring word is a keyword: the library's ``keyword_hit_rate``, the same for every α, β).
For the first of ``--methods``, the recovery rate of the ``focus`` prompt strategy on its eligible forget items
(original right, unlearned wrong) with the KeyTokens of RECOVERY_SETTINGS as keywords (exact 95% interval, random-word
control and the exact McNemar p-value against it); the annotated keywords give a reference rate in ``summary.json``.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from unpact_mech.pipeline.study import Context, Study, StudyResult, main
from unpact_mech.pipeline.tables import grouped_bars

ALPHAS = (0.2, 0.3, 0.5, 0.7, 0.9)
BETAS = (1, 2, 3, 5)
RECOVERY_SETTINGS = ((0.3, 3), (0.5, 3), (0.9, 3))
METRICS = ("top_word_hit_rate", "keytoken_hit_rate", "keyword_precision", "keyword_recall", "mean_keytokens_per_item")
RECOVERY_COLUMNS = (
    "recovery_rate",
    "ci_low",
    "ci_high",
    "recovered",
    "n_eligible",
    "random_control_rate",
    "p_vs_random",
)


def grid_row(units, alpha: float, beta: int) -> tuple[dict, list]:
    """Agreement of the (alpha, beta) KeyTokens with the annotated keywords, and the per-item agreements."""
    from unpact_mech.attribution.keytokens import agreement_summary, keytoken_mask, keyword_agreement

    agreements = [
        keyword_agreement(u.scores, keytoken_mask(u.scores, keytoken_alpha=alpha, keytoken_beta=beta), u.is_keyword)
        for u in units
    ]
    s = agreement_summary(agreements)
    with_kw = [a for a in agreements if a.n_keywords]
    row = {
        "keytoken_alpha": alpha,
        "keytoken_beta": beta,
        "n_items_with_keywords": s["n_items_with_keywords"],
        "top_word_hit_rate": s["keyword_hit_rate"],
        "keytoken_hit_rate": float(np.mean([a.recall > 0 for a in with_kw])) if with_kw else None,
        "keyword_precision": s["keyword_precision"],
        "keyword_recall": s["keyword_recall"],
        "mean_keytokens_per_item": s["mean_keytokens_per_item"],
    }
    return row, agreements


def focus_recovery(ctx: Context, model, keywords) -> dict:
    """Recovery rate of the ``focus`` strategy (with its random-word control) using ``keywords``."""
    from unpact_mech.recovery import run_recovery

    cfg = ctx.recovery_config(["focus"])
    rec = run_recovery(
        ctx.original,
        model,
        ctx.items,
        cfg,
        keywords=keywords,
        original_baseline=ctx.original_evaluation,
        progress=False,
    )
    return {k: rec.rates.iloc[0].get(k) for k in RECOVERY_COLUMNS}


def recovery_rows(ctx: Context, occlusion) -> tuple[list[dict], dict | None]:
    """Focus recovery for RECOVERY_SETTINGS on the first method's model, and with the annotated keywords."""
    from unpact_mech.attacks.keywords import data_keywords
    from unpact_mech.scoring.tokens import encode_item
    from unpact_mech.utils import progress_bar

    [(method, model)] = list(ctx.unlearned())  # the study uses the first of --methods only
    rows = [
        {"keytoken_alpha": a, "keytoken_beta": b, "recovery_method": method}
        | focus_recovery(ctx, model, ctx.keywords(occlusion, ctx.items, keytoken_alpha=a, keytoken_beta=b))
        for a, b in progress_bar(RECOVERY_SETTINGS, enabled=ctx.progress, desc="focus recovery")
    ]
    reference = None
    if any(it.keywords for it in ctx.items):
        annotated = [data_keywords(it, encode_item(ctx.original, it)) for it in ctx.items]
        reference = {"recovery_method": method} | focus_recovery(ctx, model, annotated)
    return rows, reference


def heatmaps(table: pd.DataFrame, path) -> None:
    """α × β heatmaps of the KeyToken hit rate, precision and recall."""
    from unpact_mech.report.plots import plt, save_figure  # plots selects the Agg backend

    panels = ("keytoken_hit_rate", "keyword_precision", "keyword_recall")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2), layout="constrained")
    for ax, metric in zip(axes, panels):
        mat = table.pivot(index="keytoken_alpha", columns="keytoken_beta", values=metric).astype(float)
        im = ax.imshow(mat.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(mat.to_numpy()):
            ax.text(
                j,
                i,
                "nan" if np.isnan(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if v < 0.6 else "k",
            )
        ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns])
        ax.set_yticks(range(mat.shape[0]), [str(r) for r in mat.index])
        ax.set_xlabel("β (min. positive words before the α cut)")
        if ax is axes[0]:
            ax.set_ylabel("α (normalised contribution threshold)")
        ax.set_title(metric.replace("_", " "), fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle("KeyTokens vs annotated keywords over α × β", fontsize=10)
    save_figure(fig, path)


def run(ctx: Context) -> StudyResult:
    occlusion = ctx.attribute(ctx.original, ctx.items, "original")
    rows, long = [], []
    for alpha in ALPHAS:
        for beta in BETAS:
            row, agreements = grid_row(occlusion.units, alpha, beta)
            rows.append(row)
            long.append(
                pd.DataFrame(
                    [
                        {
                            "item_id": u.item_id,
                            "split": u.split,
                            "keytoken_alpha": alpha,
                            "keytoken_beta": beta,
                            "hit": float(a.hit),
                            "precision": a.precision,
                            "recall": a.recall,
                            "n_keytokens": a.n_keytokens,
                        }
                        for u, a in zip(occlusion.units, agreements)
                    ]
                )
            )
    recovery, reference = recovery_rows(ctx, occlusion)
    table = pd.DataFrame(rows).merge(pd.DataFrame(recovery), on=["keytoken_alpha", "keytoken_beta"], how="left")
    heatmaps(table, ctx.out / "keytoken_agreement.png")
    grouped_bars(
        table.dropna(subset=["recovery_rate"]).assign(
            setting=lambda t: "α=" + t["keytoken_alpha"].astype(str) + " β=" + t["keytoken_beta"].astype(str)
        ),
        "setting",
        {"focus (KeyTokens)": "recovery_rate", "random-word control": "random_control_rate"},
        ctx.out / "focus_recovery.png",
        errors={"recovery_rate": ("ci_low", "ci_high")},
        ylabel="recovery rate",
        ylim=(0, 1.02),
        title=f"focus strategy on {recovery[0]['recovery_method']}: KeyTokens by α, β",
    )
    results = pd.concat(long, ignore_index=True).melt(
        id_vars=["item_id", "split", "keytoken_alpha", "keytoken_beta"], var_name="metric"
    )
    return StudyResult(
        table,
        results,
        {"data_keywords_recovery": reference, "keytoken_alphas": list(ALPHAS), "keytoken_betas": list(BETAS)},
    )


STUDY = Study("keytoken_sweep", __doc__, run, first_method_only=True)

if __name__ == "__main__":
    sys.exit(main(STUDY))
