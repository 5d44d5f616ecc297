"""Finding 3 — unlearning damages unrelated knowledge because it penalises every prompt word, common ones included.

Per unlearning method, on the held-out UTILITY items (no method trains on them; and, named as such, on the retain
items the retain losses train on): the destructive rate ``D = |{i in K : unlearned wrong on i}| / |K|`` over the
items K the original model answers correctly (exact Clopper–Pearson 95% interval), and word-level occlusion
(``C(w) = LP(x, y) - LP(x without w, y)``) on the original and on the unlearned model. Words are split into common
function words (``FUNCTION_WORDS``, case-insensitive) and content words (every other word with a letter or digit;
punctuation is left out). Per item i: ``f_i`` / ``c_i`` = mean contribution of its function / content words, before
and after; the table gives the macro means, their changes (after - before), and the paired difference
``mean_i[Δf_i - Δc_i]`` with a bootstrap CI over items. ``summary.json`` adds the mean change per function word.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from unpact_mech.pipeline.study import Context, Study, StudyResult, main
from unpact_mech.pipeline.tables import grouped_bars, long_rows, paired_contrast

#: Common function words whose contribution the paper says unlearning wipes out on unrelated prompts.
FUNCTION_WORDS = ("what", "is", "the", "which", "of", "in", "a", "who", "does", "did")


def word_class(word: str) -> str | None:
    """``function`` for a word in FUNCTION_WORDS (case-insensitive), ``content`` for any other word with a letter or
    digit, None for punctuation."""
    text = str(word).strip()
    if text.lower() in FUNCTION_WORDS:
        return "function"
    return "content" if any(ch.isalnum() for ch in text) else None


def per_item_classes(units: pd.DataFrame) -> pd.DataFrame:
    """Per (item, word class): mean contribution before and after (``compare_units`` rows of one method)."""
    df = units.assign(group=units["token"].map(word_class)).dropna(subset=["group"])
    return df.groupby(["item_id", "split", "group"], as_index=False, sort=False)[["before", "after"]].mean()


def destruction_row(method: str, split: str, known: np.ndarray, after: np.ndarray) -> dict:
    """Destructive rate over the ``split`` items the original knows (exact 95% interval), accuracy before/after."""
    from unpact_mech.stats import destructive_rate

    rate = destructive_rate(known, after)
    return {
        "method": method,
        "split": split,
        "n_items": len(known),
        "acc_before": float(known.mean()),
        "acc_after": float(after.mean()),
        "destructive_rate": rate.value,
        "destructive_rate_ci_low": rate.low,
        "destructive_rate_ci_high": rate.high,
        "destroyed": rate.k,
        "n_known": rate.n,
    }


def run(ctx: Context) -> StudyResult:
    from unpact_mech.attribution.run import compare_runs

    splits = {name: ctx.split(name) for name in ("utility", "retain") if ctx.split(name)}
    if "utility" not in splits:
        print("warning: no utility items: collateral damage is measured on retain (trained-on) items only")
    known = {s: ctx.original_evaluation.set_index("item_id").loc[[it.id for it in its], "correct"].to_numpy(bool)
             for s, its in splits.items()}  # fmt: skip
    before = {s: ctx.attribute(ctx.original, its, "original") for s, its in splits.items()}
    rows, long, by_word = [], [], {}
    for method, model in ctx.unlearned():
        for split, items in splits.items():
            ids = [it.id for it in items]
            after = ctx.evaluate(model, items).set_index("item_id").loc[ids, "correct"].to_numpy(bool)
            units = compare_runs(before[split], ctx.attribute(model, items, method, like=before[split])).units
            classes = per_item_classes(units)
            rows.append(
                destruction_row(method, split, known[split], after)
                | paired_contrast(classes, "function", "content", n_boot=ctx.n_boot, seed=ctx.seed)
            )
            words = units.assign(word=units["token"].str.strip().str.lower())
            by_word[f"{method}/{split}"] = (
                words[words["word"].isin(FUNCTION_WORDS)].groupby("word")["diff"].mean().to_dict()
            )
            correct = pd.DataFrame(
                {"item_id": ids, "split": split, "original_correct": known[split], "unlearned_correct": after}
            )
            long += [
                long_rows(classes, ["item_id", "split", "group"], ["before", "after"], method=method),
                long_rows(correct, ["item_id", "split"], ["original_correct", "unlearned_correct"], method=method),
            ]
    table = pd.DataFrame(rows)
    bars = {f"{g} words {when}": f"{g}_{when}" for g in ("function", "content") for when in ("before", "after")}
    grouped_bars(
        table.assign(label=table["method"] + " · " + table["split"]),
        "label",
        bars,
        ctx.out / "common_words.png",
        ylabel="mean word contribution C (occlusion target units)",
        title="Utility (held-out) and retain items: function vs content words, original -> unlearned",
    )
    return StudyResult(
        table,
        pd.concat(long, ignore_index=True),
        {"function_words": list(FUNCTION_WORDS), "function_word_change": by_word},
    )


STUDY = Study("finding3_destruction", __doc__, run)

if __name__ == "__main__":
    sys.exit(main(STUDY))
