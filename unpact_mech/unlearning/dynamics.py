"""Unlearning dynamics: forget/retain accuracy at evaluation steps, as a table and a plot.

Accuracy is the toolkit's one definition — :func:`unpact_mech.scoring.evaluate.evaluate_items` (greedy answer,
``contains`` judge) — plus the mean teacher-forced answer log-prob (LP) per split.
(The plot uses matplotlib directly; it can move to ``unpact_mech.report`` once that package hosts shared plots.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.scoring.evaluate import evaluate_items, to_long
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS
from unpact_mech.scoring.tokens import encode_items

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.unlearning.loop import Evaluate


def split_metrics(per_item: pd.DataFrame) -> dict[str, float]:
    """``{split}_accuracy`` and ``{split}_logprob`` (means over the split's items) for every split present."""
    row: dict[str, float] = {}
    for split, part in per_item.groupby("split", sort=True):
        row[f"{split}_accuracy"] = float(part["correct"].mean())
        row[f"{split}_logprob"] = float(part["logprob"].mean())
    return row


def make_evaluator(
    model: "HookedLM",
    items: Sequence["QAItem"],
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = False,
    initial: pd.DataFrame | None = None,
) -> "Evaluate":
    """An ``evaluate(step) -> (row, long per-item rows)`` over ``items`` (encoded once).

    ``initial``: an :func:`evaluate_items` frame of these items on the model's current (step-0) weights with the
    same settings, returned at step 0 instead of evaluating again (e.g. the demo's evaluation of the base model)."""
    encoded = encode_items(model, items)
    if initial is not None:
        initial = initial.set_index("item_id").loc[[it.id for it in items]].reset_index()

    def evaluate(step: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if step == 0 and initial is not None:
            return split_metrics(initial), to_long(initial).to_dict("records")
        per_item = evaluate_items(
            model, items, encoded=encoded, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
        )
        return split_metrics(per_item), to_long(per_item).to_dict("records")

    return evaluate


def plot_dynamics(dynamics: pd.DataFrame, loss_log: pd.DataFrame, path: str | Path, *, title: str = "") -> None:
    """Two panels: forget/retain accuracy (and LP) by step; forget/retain loss by step. Written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unpact_mech.io.atomic import atomic_write_bytes

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = {"forget": "tab:red", "retain": "tab:blue", "utility": "tab:green"}
    for split in ("forget", "retain", "utility"):
        col = f"{split}_accuracy"
        if col in dynamics:
            ax_acc.plot(dynamics["step"], dynamics[col], "o-", color=colors[split], label=f"{split} accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy (greedy, contains)")
    ax_acc.set_ylim(-0.03, 1.03)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower left", fontsize=8)
    for split in ("forget", "retain"):
        col = f"{split}_loss"
        if col in loss_log and loss_log[col].notna().any():
            ax_loss.plot(loss_log["step"], loss_log[col], ".-", color=colors[split], label=f"{split} loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss term")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
