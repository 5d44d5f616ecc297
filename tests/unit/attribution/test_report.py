"""Reusable renderers: the HTML token view escapes everything and is self-contained; the PNG heatmaps render."""

from __future__ import annotations

import re

import pandas as pd

from unpact_mech.report import (
    plot_layer_component,
    plot_layer_head,
    plot_logit_lens,
    token_heatmap_html,
    write_token_heatmap,
)

EVIL = "<script>alert('x')</script>"


def _units(model, values, token_texts):
    return pd.DataFrame(
        {
            "item_id": "<b>id</b>",
            "split": "forget",
            "model": model,
            "metric": "contribution",
            "unit": range(len(values)),
            "token": token_texts,
            "value": values,
            "is_keytoken": [v == max(values) for v in values],
            "is_keyword": [False, True, False],
        }
    )


def test_html_escapes_all_text_and_loads_nothing(tmp_path):
    units = pd.concat(
        [
            _units("original <i>", [0.5, -0.25, 1.0], ["What", EVIL, " France&"]),
            _units("unlearned", [0.1, 0.0, -1.0], ["What", EVIL, " France&"]),
        ]
    )
    items = pd.DataFrame([{"item_id": "<b>id</b>", "question": f"What is {EVIL}?", "answer": '"Paris" & <u>'}])
    page = token_heatmap_html(units, items=items, title=f"title {EVIL}", subtitle="a <vs> b")
    assert "<script" not in page.lower()  # the only scripts would come from data: none at all
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;id&lt;/b&gt;" in page and "<b>id</b>" not in page
    assert "original &lt;i&gt;" in page and "&quot;Paris&quot; &amp; &lt;u&gt;" in page and "France&amp;" in page
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", page)  # no network resources
    assert page.count('class="panel"') == 2  # side by side
    assert 'class="tok kt"' in page and "tok kw" in page  # KeyToken and keyword markers
    assert "rgba(214,39,40,0.850)" in page and "rgba(31,119,180,0.850)" in page  # +/- 1.0 = full opacity
    path = write_token_heatmap(tmp_path / "t.html", units, items=items)
    assert path.read_text().startswith("<!DOCTYPE html>")


def test_png_heatmaps(tmp_path):
    heads = pd.DataFrame(
        [
            {
                "item_id": i,
                "model": m,
                "metric": "attention_path",
                "layer": L,
                "head": h,
                "position": p,
                "value": (L + h + p) * s,
            }
            for i in ("a", "b")
            for m, s in (("orig", 1.0), ("unl", 0.5))
            for L in range(3)
            for h in range(2)
            for p in range(4)
        ]
    )
    out = plot_layer_head(heads, tmp_path / "heads.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    comps = pd.DataFrame(
        [
            {"item_id": "a", "model": m, "metric": "direct_logit", "layer": L, "component": c, "value": L - 1.0}
            for m in ("orig",)
            for L in range(-1, 3)
            for c in (("embed",) if L < 0 else ("attn", "mlp"))
        ]
        + [{"item_id": "a", "model": "orig", "metric": "lens_logprob", "layer": L, "value": -3.0 + L} for L in range(3)]
    )
    assert plot_layer_component(comps, tmp_path / "comp.png").stat().st_size > 1000
    assert plot_logit_lens(comps, tmp_path / "lens.png").stat().st_size > 1000
