"""PNG heatmaps of attribution results (matplotlib, Agg backend; written atomically). Reusable: every function
takes the long frames of :mod:`unpact_mech.attribution` and a path.

* :func:`plot_layer_head` — layer x head attention-path contributions (summed over source positions);
* :func:`plot_layer_component` — layer x {attn, mlp} direct logit attribution;
* :func:`plot_logit_lens` — the answer's LP after each block.

With rows from two models (column ``model``), heatmaps get one panel per model and a third "after - before"
panel; values are averaged over items. Colour scales are symmetric around 0 (contributions are signed).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from unpact_mech.io.atomic import atomic_write_bytes

COMPONENT_ORDER = ("attn", "mlp")


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _panels(frame: pd.DataFrame, panel: str) -> list[str]:
    return list(dict.fromkeys(frame[panel])) if panel in frame.columns else [""]


def _matrix(frame: pd.DataFrame, rows: str, cols: str, row_order: Sequence | None = None) -> pd.DataFrame:
    """Mean over items of the per-item sums of ``value`` in each (row, col) cell."""
    per_item = frame.groupby(["item_id", rows, cols], sort=True)["value"].sum().reset_index()
    mat = per_item.groupby([rows, cols], sort=True)["value"].mean().unstack(cols)
    return mat.reindex(list(row_order)) if row_order is not None else mat


def _heatmaps(mats: list[tuple[str, pd.DataFrame]], *, xlabel: str, ylabel: str, title: str, path: str | Path) -> Path:
    """One panel per (title, matrix), stacked vertically (matrices are wide: layers on x); a last "diff" panel gets
    its own symmetric scale."""
    n = len(mats)
    first = mats[0][1]
    width = min(12.0, max(3.2, 0.32 * first.shape[1] + 1.8))
    height = max(1.6, 0.28 * first.shape[0] + 1.0)
    fig, axes = plt.subplots(n, 1, figsize=(width, height * n), squeeze=False, layout="constrained")
    shared = max(
        (np.nanmax(np.abs(m.to_numpy(float))) for t, m in mats if not t.startswith("after - before")), default=1.0
    )
    for ax, (name, mat) in zip(axes[:, 0], mats):
        values = mat.to_numpy(float)
        lim = np.nanmax(np.abs(values)) if name.startswith("after - before") else shared
        lim = lim if np.isfinite(lim) and lim > 0 else 1.0
        im = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns], fontsize=7)
        ax.set_yticks(range(mat.shape[0]), [str(r) for r in mat.index], fontsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _with_diff(frame: pd.DataFrame, panel: str, build) -> list[tuple[str, pd.DataFrame]]:
    names = _panels(frame, panel)
    mats = [(str(n), build(frame[frame[panel] == n] if panel in frame.columns else frame)) for n in names]
    if len(mats) == 2:
        mats.append((f"after - before ({mats[1][0]} - {mats[0][0]})", mats[1][1] - mats[0][1]))
    return mats


def plot_layer_head(
    frame: pd.DataFrame,
    path: str | Path,
    *,
    title: str = "Attention-path contribution to the answer",
    panel: str = "model",
) -> Path:
    """Heatmap (head x layer) of ``attention_path`` rows: per item summed over sources, then averaged."""
    rows = frame[frame["metric"] == "attention_path"]
    mats = _with_diff(rows, panel, lambda df: _matrix(df, "head", "layer"))
    return _heatmaps(mats, xlabel="layer", ylabel="head", title=title, path=path)


def plot_layer_component(
    frame: pd.DataFrame, path: str | Path, *, title: str = "Direct logit attribution per layer", panel: str = "model"
) -> Path:
    """Heatmap ({attn, mlp} x layer) of ``direct_logit`` rows (embeddings are not a layer: left out)."""
    rows = frame[(frame["metric"] == "direct_logit") & frame["component"].isin(COMPONENT_ORDER)]
    mats = _with_diff(rows, panel, lambda df: _matrix(df, "component", "layer", COMPONENT_ORDER))
    return _heatmaps(mats, xlabel="layer", ylabel="component", title=title, path=path)


def plot_logit_lens(
    frame: pd.DataFrame,
    path: str | Path,
    *,
    title: str = "Logit lens: answer log-prob after each block",
    panel: str = "model",
) -> Path:
    """Mean ``lens_logprob`` per layer, one line per model."""
    rows = frame[frame["metric"] == "lens_logprob"]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), layout="constrained")
    for name in _panels(rows, panel):
        part = rows[rows[panel] == name] if panel in rows.columns else rows
        series = part.groupby("layer")["value"].mean()
        ax.plot(series.index, series.to_numpy(), marker="o", ms=3, label=str(name))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (residual stream after the block)")
    ax.set_ylabel("answer LP (mean log-prob)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
