"""Tables and figures of the experiment scripts: bootstrap means, paired contrasts, terminal view, long rows, bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def mean_ci(values: Sequence[float] | np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap 95% CI (resampling items; NaN if empty)."""
    from unpact_mech.stats import bootstrap_ci

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
        index="item_id", columns="group", values=["before", "after", "change"], aggfunc="mean"
    )
    for g in (a, b):
        for col in ("before", "after", "change"):
            row[f"{g}_{col}"] = float(wide[(col, g)].mean()) if (col, g) in wide.columns else float("nan")
    changes = [("change", a), ("change", b)]
    diffs = (
        (wide[changes[0]] - wide[changes[1]]).dropna().to_numpy() if set(changes) <= set(wide.columns) else np.array([])
    )
    row["diff_change"], row["diff_change_ci_low"], row["diff_change_ci_high"] = mean_ci(diffs, n_boot=n_boot, seed=seed)
    row["n_paired"] = int(diffs.size)
    return row


def format_table(table: pd.DataFrame) -> str:
    """Terminal view: ``x``, ``x_ci_low``, ``x_ci_high`` columns (and a recovery rate's ``ci_low``, ``ci_high``)
    shown as one ``x [low, high]`` column; 3 decimals; ``—`` for missing values."""
    view = table.copy()
    pairs = {c: (f"{c}_ci_low", f"{c}_ci_high") for c in table.columns}
    pairs["recovery_rate"] = ("ci_low", "ci_high")
    for col, (lo_col, hi_col) in pairs.items():
        if col not in table.columns or lo_col not in table.columns or hi_col not in table.columns:
            continue
        view[col] = [
            f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(v) else "—"
            for v, lo, hi in zip(table[col], table[lo_col], table[hi_col])
        ]
        view = view.drop(columns=[lo_col, hi_col])
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="—")


def long_rows(frame: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str], **labels: Any) -> pd.DataFrame:
    """Wide -> long ``keys..., metric, value`` over ``metrics`` columns, plus constant ``labels`` columns."""
    out = frame.melt(id_vars=list(keys), value_vars=list(metrics), var_name="metric", value_name="value")
    return out.assign(**labels)


def grouped_bars(
    table: pd.DataFrame,
    x: str,
    bars: dict[str, str],
    path: Path,
    *,
    ylabel: str,
    title: str,
    errors: dict[str, tuple[str, str]] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Grouped bar chart: one group per row of ``table`` (labelled by column ``x``), one bar per ``bars`` entry
    (legend label -> column); ``errors`` maps a bar column to its (lo, hi) CI columns; ``ylim`` e.g. (0, 1) for
    rates."""
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
    ax.set_xticks(
        np.arange(n),
        [str(v) for v in table[x]],
        fontsize=8,
        rotation=30 if n > 4 else 0,
        ha="right" if n > 4 else "center",
    )
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(ylabel, fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
