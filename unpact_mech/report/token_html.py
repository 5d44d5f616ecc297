"""Self-contained HTML view of token/word attributions: one block per item, one panel per model side by side.

Input: the long unit frame of :mod:`unpact_mech.attribution` (rows with ``item_id, unit, token, value`` and
optionally ``model``, ``split``, ``is_keytoken``, ``is_keyword``) and optionally an item table
(``item_id, question, answer``). Colour: red = supports the answer, blue = works against it, opacity =
|value| / the largest |value| of the item over all panels (so panels of the same item are comparable).
KeyTokens are bold and underlined; annotated keywords have a dotted outline.

Safety: every piece of text from data files, tokenizers or model names is HTML-escaped (a question containing
``<script>`` renders as text); the page loads nothing from the network (inline CSS, no scripts).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from unpact_mech.io.atomic import atomic_write_text

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.0em; margin: 1.2em 0 0.3em; }
h3 { font-size: 0.85em; margin: 0 0 0.3em; color: #555; }
.legend, .meta { font-size: 0.85em; color: #555; }
.panels { display: flex; gap: 1em; flex-wrap: wrap; }
.panel { flex: 1 1 24em; border: 1px solid #ddd; border-radius: 4px; padding: 0.5em 0.7em; }
.tokens { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.95em; line-height: 2.0;
  white-space: pre-wrap; }
.tok { border-radius: 3px; padding: 0.1em 0; }
.kt { font-weight: bold; text-decoration: underline; }
.kw { outline: 1px dotted #333; }
.swatch { display: inline-block; width: 1.2em; height: 0.9em; vertical-align: middle; border-radius: 2px; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _color(value: float, scale: float) -> str:
    if not math.isfinite(value) or scale <= 0:
        return "transparent"
    alpha = min(1.0, abs(value) / scale) * 0.85
    rgb = "214,39,40" if value > 0 else "31,119,180"
    return f"rgba({rgb},{alpha:.3f})"


def _flag(row: pd.Series, col: str) -> bool:
    value = row.get(col, False)
    return bool(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else False


def _panel(rows: pd.DataFrame, scale: float) -> str:
    spans = []
    for _, row in rows.sort_values("unit").iterrows():
        value = float(row["value"])
        classes = "tok" + (" kt" if _flag(row, "is_keytoken") else "") + (" kw" if _flag(row, "is_keyword") else "")
        tip = f"{row['token']!s} = {value:+.4f}"
        style = f"background:{_color(value, scale)}"
        spans.append(f'<span class="{classes}" style="{style}" title="{_e(tip)}">{_e(row["token"])}</span>')
    return " ".join(spans)


LEGEND = (
    '<p class="legend"><span class="swatch" style="background:rgba(214,39,40,0.85)"></span> supports the answer '
    '&nbsp; <span class="swatch" style="background:rgba(31,119,180,0.85)"></span> works against it '
    '&nbsp; (opacity: |value| / largest |value| of the item) &nbsp; <span class="kt">bold underlined</span> = '
    'KeyToken &nbsp; <span class="kw">dotted outline</span> = annotated keyword. Hover a token for its value.</p>'
)


def token_heatmap_section(units: pd.DataFrame, *, items: pd.DataFrame | None = None, panel: str = "model") -> str:
    """The legend and one block per item (an HTML fragment styled by :data:`CSS`; embeddable in a larger page)."""
    units = units[units["metric"] == "contribution"] if "metric" in units.columns else units
    panels = list(dict.fromkeys(units[panel])) if panel in units.columns else [None]
    info = items.set_index("item_id") if items is not None and len(items) else None
    blocks = []
    for item_id, rows in units.groupby("item_id", sort=False):
        values = rows["value"].astype(float).abs()
        scale = float(values.max()) if len(values) else 0.0
        split = rows["split"].iloc[0] if "split" in rows.columns else ""
        head = f"<h2>{_e(item_id)}" + (f' <span class="meta">· {_e(split)}</span>' if split else "") + "</h2>"
        meta = ""
        if info is not None and item_id in info.index:
            rec = info.loc[item_id]
            meta = f'<p class="meta">Q: {_e(rec.get("question", ""))} &nbsp;→&nbsp; A: {_e(rec.get("answer", ""))}</p>'
        cells = []
        for name in panels:
            part = rows if name is None else rows[rows[panel] == name]
            label = "" if name is None else f"<h3>{_e(name)}</h3>"
            cells.append(f'<div class="panel">{label}<div class="tokens">{_panel(part, scale)}</div></div>')
        blocks.append(f'<section class="item">{head}{meta}<div class="panels">{"".join(cells)}</div></section>')
    return LEGEND + "\n" + "\n".join(blocks)


def token_heatmap_html(
    units: pd.DataFrame,
    *,
    items: pd.DataFrame | None = None,
    title: str = "Token attributions",
    panel: str = "model",
    subtitle: str = "",
) -> str:
    """Render the page (a complete HTML document as a string). See the module docstring for the inputs."""
    sub = f'<p class="meta">{_e(subtitle)}</p>' if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><h1>{_e(title)}</h1>{sub}"
        + token_heatmap_section(units, items=items, panel=panel)
        + "\n</body></html>\n"
    )


def write_token_heatmap(path: str | Path, units: pd.DataFrame, **kwargs) -> Path:
    """Write :func:`token_heatmap_html` to ``path`` atomically."""
    atomic_write_text(path, token_heatmap_html(units, **kwargs))
    return Path(path)
