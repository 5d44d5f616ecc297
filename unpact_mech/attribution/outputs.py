"""Write attribution runs into a directory (shared by ``unpact attribute`` and the demo).

Files: ``run.json``, ``results.csv`` (long), ``summary.json``, ``tokens.html`` (token/word heatmaps, models side by
side), ``attention_heads.png`` (layer x head) for methods with a head view, ``residual_components.png`` +
``logit_lens.png`` for methods with a layer view; with a comparison, ``comparison.csv`` and ``keytoken_change.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.attribution.run import AttributionRun, Comparison
from unpact_mech.io import RunWriter, atomic_write_text


def attribution_summary(
    runs: Sequence[AttributionRun], comparison: Comparison | None, labels: Sequence[str], backend: str
) -> dict[str, Any]:
    summary = runs[0].summary | {"model": labels[0], "backend": backend}
    if comparison is not None:
        summary["compared"] = runs[1].summary | {"model": labels[1]}
        summary["comparison"] = comparison.summary
    return summary


def write_attribution(
    out_dir: str | Path,
    runs: Sequence[AttributionRun],
    comparison: Comparison | None,
    items: Sequence,
    run: RunWriter,
    summary: dict[str, Any],
    *,
    title: str,
    subtitle: str = "",
) -> None:
    from unpact_mech.report.plots import plot_layer_component, plot_layer_head, plot_logit_lens
    from unpact_mech.report.token_html import write_token_heatmap

    out = Path(out_dir)
    results = pd.concat([r.frame for r in runs], ignore_index=True)
    run.write(out, results, summary)
    method = runs[0].config.method_object()
    if runs[0].units:
        units = pd.concat([r.unit_frame() for r in runs], ignore_index=True)
        table = pd.DataFrame([{"item_id": it.id, "question": it.question, "answer": it.answer} for it in items])
        write_token_heatmap(out / "tokens.html", units, items=table, title=title, subtitle=subtitle)
    if method.head_view:
        plot_layer_head(results, out / "attention_heads.png")
    if method.layer_view:
        plot_layer_component(results, out / "residual_components.png")
        plot_logit_lens(results, out / "logit_lens.png")
    if comparison is not None:
        atomic_write_text(out / "comparison.csv", comparison.frame().to_csv(index=False))
        if len(comparison.keytokens):
            atomic_write_text(out / "keytoken_change.csv", comparison.keytokens.to_csv(index=False))
