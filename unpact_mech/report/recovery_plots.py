"""PNG plots of recovery results (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from unpact_mech.report.plots import save_figure


def plot_recovery_rates(rates: pd.DataFrame, path: str | Path, title: str = "Recovery by keyword emphasis") -> Path:
    """Horizontal bars: recovery rate per condition with its exact (Clopper–Pearson) 95% interval; the
    random-word/position control as a hollow diamond. ``rates`` is :attr:`RecoveryResult.rates`."""
    df = rates.reset_index(drop=True)
    y = np.arange(len(df))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(df) + 1.4))
    colors = ["#4C72B0" if k == "strategy" else "#DD8452" for k in df["kind"]]
    val = df["recovery_rate"].to_numpy(float)
    lo = np.clip(val - df["ci_low"].to_numpy(float), 0, None)
    hi = np.clip(df["ci_high"].to_numpy(float) - val, 0, None)
    ax.barh(y, np.nan_to_num(val), xerr=[np.nan_to_num(lo), np.nan_to_num(hi)], color=colors, alpha=0.85, capsize=3)
    if "random_control_rate" in df:
        ax.scatter(
            df["random_control_rate"].to_numpy(float),
            y,
            marker="D",
            facecolors="none",
            edgecolors="k",
            zorder=3,
            label="random-word control",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, [f"{c} ({k[:5]})" for c, k in zip(df["condition"], df["kind"])], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("recovery rate (eligible forget items answered again)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_layer_sweep(
    sweep: pd.DataFrame, path: str | Path, title: str = "Recovery by layer", by: str = "intervention"
) -> Path:
    """Grid: one row per value of column ``by`` (default: the intervention), one column per mode (single layer /
    cumulative 0..L); a line per position group. ``sweep`` is :func:`~unpact_mech.recovery.ablation.layer_sweep`'s."""
    rows, modes = list(dict.fromkeys(sweep[by])), list(dict.fromkeys(sweep["mode"]))
    fig, axes = plt.subplots(
        len(rows),
        len(modes),
        figsize=(4.2 * len(modes), 2.8 * len(rows)),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for i, m in enumerate(rows):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sub = sweep[(sweep[by] == m) & (sweep["mode"] == mode)]
            for group, g in sub.groupby("group", sort=False):
                ax.plot(g["layer"], g["recovery_rate"], marker="o", ms=3, label=group)
            ax.set_title(f"{m} · {'layer L only' if mode == 'single' else 'layers 0..L'}", fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if i == len(rows) - 1:
                ax.set_xlabel("layer L")
            if j == 0:
                ax.set_ylabel("recovery rate")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def battery_matrix(rates_by_model: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long table of every (unlearned model, condition): ``model, condition, family, recovery_rate, ci_low, ci_high,
    recovered, n_eligible`` — the data of :func:`plot_battery_heatmap`, from each model's ``rates.csv`` (rows of
    several runs of one model are concatenated; control conditions are left out)."""
    cols = ["condition", "family", "recovery_rate", "ci_low", "ci_high", "recovered", "n_eligible"]
    frames = []
    for model, rates in rates_by_model.items():
        keep = rates[~rates["is_control"].astype(bool)] if "is_control" in rates else rates
        frames.append(keep[[c for c in cols if c in keep]].assign(model=model))
    if not frames:
        return pd.DataFrame(columns=["model", *cols])
    out = pd.concat(frames, ignore_index=True)
    return out[["model", *[c for c in cols if c in out]]]


def plot_battery_heatmap(matrix: pd.DataFrame, path: str | Path, title: str = "Is it really gone?") -> Path:
    """Heatmap, unlearned models (rows) x conditions (columns, in first-seen order): the recovery rate on the
    eligible forget items, each cell annotated ``k/n`` and the exact 95% interval; blank where not run."""
    models = list(dict.fromkeys(matrix["model"]))
    conditions = list(dict.fromkeys(matrix["condition"]))
    grid = np.full((len(models), len(conditions)), np.nan)
    notes = [["" for _ in conditions] for _ in models]
    for r in matrix.itertuples():
        i, j = models.index(r.model), conditions.index(r.condition)
        grid[i, j] = r.recovery_rate
        if not pd.isna(r.recovery_rate):
            notes[i][j] = f"{int(r.recovered)}/{int(r.n_eligible)}\n[{r.ci_low:.2f},{r.ci_high:.2f}]"
    fig, ax = plt.subplots(figsize=(max(6.0, 0.85 * len(conditions) + 2.5), 0.75 * len(models) + 2.4))
    image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="magma_r", aspect="auto")
    for i in range(len(models)):
        for j in range(len(conditions)):
            if notes[i][j]:
                ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=6,
                        color="white" if grid[i, j] > 0.55 else "black")  # fmt: skip
    ax.set_xticks(range(len(conditions)), conditions, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.03, label="recovery rate")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
