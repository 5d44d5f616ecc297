"""Layer study — which layers, components and heads carry the answer before and after unlearning.

On the first ``--max-items`` forget items (and as many retain items, for contrast), original vs each unlearned model:
``residual`` attribution — the direct logit attribution of each layer's attention and MLP output to the answer
(``c · a``, a the answer's readout direction under the frozen final norm; mean over answer tokens) and the logit
lens (the residual stream after block L through the final norm and unembedding) — and ``attention`` attribution
(the direct contribution of each layer × head, summed over source positions). Per method and split the table lists
the top-5 (layer, component) and top-5 (layer, head) by drop (mean over items of after - before, most negative
first) and the mean logit-lens layer at which the answer's first token first becomes top-1 (``first_top1_layer``;
an item that never gets there counts as ``n_layers``) before -> after, with the share of items that get there.
Plots: per method a layer × component heatmap (original, unlearned, after - before) and logit-lens curves.
"""

from __future__ import annotations

import sys

import pandas as pd

from unpact_mech.commands.common import positive_int
from unpact_mech.pipeline.study import Context, Study, StudyResult, main

TOP = 5


def add_options(p) -> None:
    p.add_argument(
        "--max-items",
        type=positive_int,
        default=16,
        metavar="N",
        help="forget items (and retain items) attributed (default: 16)",
    )


def top_drops(diff: pd.DataFrame, keys: list[str], name) -> tuple[list[dict], str]:
    """The TOP rows of ``diff`` with the most negative mean ``diff`` over items, and a one-line text of them."""
    means = diff.groupby(keys, as_index=False)[["before", "after", "diff"]].mean().nsmallest(TOP, "diff")
    rows = [
        {"name": name(r), "before": r["before"], "after": r["after"], "diff": r["diff"]}
        for r in means.to_dict("records")
    ]
    return rows, ", ".join(f"{r['name']} {r['diff']:+.3f}" for r in rows)


def first_top1(lens_rank: pd.DataFrame, column: str, n_layers: int) -> pd.Series:
    """Per item: the first layer whose logit-lens rank of the answer's first token is 0 (``n_layers`` if none)."""
    top1 = lens_rank[lens_rank[column] == 0]
    first = top1.groupby("item_id")["layer"].min()
    return first.reindex(lens_rank["item_id"].unique()).fillna(n_layers)


def split_row(method: str, split: str, layers: pd.DataFrame, heads: pd.DataFrame, n_layers: int) -> tuple[dict, dict]:
    """Table row (and detailed rankings) of one method on one split."""
    dla = layers[(layers["metric"] == "direct_logit") & (layers["layer"] >= 0)]
    comps, comps_text = top_drops(dla, ["layer", "component"], lambda r: f"L{r['layer']}.{r['component']}")
    hds, heads_text = top_drops(heads, ["layer", "head"], lambda r: f"L{r['layer']}H{r['head']}")
    lens = layers[layers["metric"] == "lens_first_rank"]
    row = {
        "method": method,
        "split": split,
        "n_items": layers["item_id"].nunique(),
        "top_component": comps[0]["name"] if comps else None,
        "top_component_diff": comps[0]["diff"] if comps else None,
        "top_components": comps_text,
        "top_head": hds[0]["name"] if hds else None,
        "top_head_diff": hds[0]["diff"] if hds else None,
        "top_heads": heads_text,
    }
    for when in ("before", "after"):
        first = first_top1(lens, when, n_layers)
        row[f"first_top1_layer_{when}"] = float(first.mean())
        row[f"reaches_top1_{when}"] = float((first < n_layers).mean())
    return row, {"components": comps, "heads": hds}


def long_diffs(comparison, method: str) -> pd.DataFrame:
    """Comparison tables -> long ``item_id, split, metric, value`` with ``quantity`` (before/after/diff)."""
    frame = comparison.frame().rename(columns={"method": "attribution"})
    keys = [c for c in frame.columns if c not in ("before", "after", "diff")]
    return frame.melt(id_vars=keys, value_vars=["before", "after", "diff"], var_name="quantity").assign(method=method)


def run(ctx: Context) -> StudyResult:
    from unpact_mech.attribution.run import compare_runs
    from unpact_mech.report.plots import plot_layer_component, plot_logit_lens

    n = ctx.args.max_items
    items = ctx.split("forget")[:n] + ctx.split("retain")[:n]
    n_layers = ctx.original.shape.n_layers
    before = {m: ctx.attribute(ctx.original, items, "original", m) for m in ("residual", "attention")}
    rows, long, details, lens_frames = [], [], {}, [before["residual"].frame]
    for method, model in ctx.unlearned():
        after = {m: ctx.attribute(model, items, method, m, like=before[m]) for m in ("residual", "attention")}
        res, att = (compare_runs(before[m], after[m]) for m in ("residual", "attention"))
        for split in dict.fromkeys(it.split for it in items):
            row, details[f"{method}/{split}"] = split_row(
                method,
                split,
                res.layers[res.layers["split"] == split],
                att.heads[att.heads["split"] == split],
                n_layers,
            )
            rows.append(row)
        long += [long_diffs(res, method), long_diffs(att, method)]
        both = pd.concat([before["residual"].frame, after["residual"].frame], ignore_index=True)
        plot_layer_component(
            both[both["split"] == "forget"],
            ctx.out / f"layer_components_{method}.png",
            title=f"Direct logit attribution on forget items: original vs {method}",
        )
        lens_frames.append(after["residual"].frame)
    lens = pd.concat(lens_frames, ignore_index=True)
    plot_logit_lens(
        lens[lens["split"] == "forget"],
        ctx.out / "logit_lens.png",
        title="Logit lens on forget items: answer LP after each block",
    )
    return StudyResult(
        pd.DataFrame(rows), pd.concat(long, ignore_index=True), {"top_drops": details, "n_layers": n_layers}
    )


STUDY = Study("layer_study", __doc__, run, add_options)

if __name__ == "__main__":
    sys.exit(main(STUDY))
