"""``report.html``: one self-contained page for a run directory (no network, no scripts, images inlined).

The builder scans ``RUN_DIR`` (recursively) for stage outputs — any directory with a ``run.json`` — and renders a
section per stage from the files the commands write:

* lineage: every chain base -> unlearned -> recovered found in the ``run.json`` files;
* ``evaluate``: accuracy per split and the per-item answers;
* ``unlearn``: forget/retain accuracy before/after, weight change, the dynamics plot;
* ``attribute``: keyword hit rate, the KeyToken shift (before vs after unlearning), token heatmaps original vs
  unlearned side by side, layer x component / layer x head / logit-lens heatmaps;
* ``recover``: recovery rates with CIs and controls, the destructive rate, the rate and layer-ablation plots.

All text from data, tokenizers and file contents is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.errors import InputError
from unpact_mech.io.atomic import atomic_write_text
from unpact_mech.report.token_html import CSS as TOKEN_CSS
from unpact_mech.report.token_html import token_heatmap_section

REPORT_CSS = (
    TOKEN_CSS
    + """
body { max-width: 72em; }
nav a { margin-right: 1em; font-size: 0.9em; }
section.stage { border-top: 2px solid #eee; margin-top: 1.6em; padding-top: 0.4em; }
table.df { border-collapse: collapse; font-size: 0.82em; margin: 0.4em 0 1em; }
table.df th, table.df td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; }
table.df th { background: #f5f5f5; } table.df td:first-child, table.df th:first-child { text-align: left; }
img.plot { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0; }
.chain { display: flex; flex-wrap: wrap; align-items: center; gap: 0.4em; margin: 0.4em 0; }
.node { border: 1px solid #999; border-radius: 6px; padding: 0.3em 0.6em; font-size: 0.85em; background: #fafafa; }
.node b { display: block; } .arrow { color: #777; }
.path { font-family: ui-monospace, monospace; font-size: 0.8em; color: #777; }
details { margin: 0.4em 0; } summary { cursor: pointer; color: #335; }
"""
)

MAX_HEATMAP_ITEMS = 16


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, *, digits: int = 3, max_rows: int = 200) -> str:
    """DataFrame -> escaped HTML table (pandas escapes cell text)."""
    if df is None or not len(df):
        return '<p class="meta">(empty)</p>'
    shown = df.head(max_rows).copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.{digits}f}")
    more = f'<p class="meta">… {len(df) - max_rows} more rows in the CSV</p>' if len(df) > max_rows else ""
    return shown.to_html(index=False, escape=True, classes="df", border=0) + more


def _stages(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for run_json in sorted(run_dir.rglob("run.json")):
        if any(part.startswith(".") or ".tmp-" in part for part in run_json.relative_to(run_dir).parts):
            continue
        meta = _read_json(run_json)
        if meta.get("command"):
            found.append((run_json.parent, meta))
    return found


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel if rel != "." else "(this directory)"


# -- sections ------------------------------------------------------------------------------------------------------
def _lineage(stages: Iterable[tuple[Path, dict[str, Any]]]) -> str:
    chains: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for _, meta in stages:
        lineage = meta.get("lineage") or []
        if lineage:
            chains[tuple(json.dumps(step, sort_keys=True, default=str) for step in lineage)] = lineage
    # keep only maximal chains: drop a chain that is a proper prefix of another
    kept = [
        chain
        for key, chain in chains.items()
        if not any(len(other) > len(key) and other[: len(key)] == key for other in chains)
    ]
    if not kept:
        return '<p class="meta">No lineage recorded.</p>'
    rows = []
    for chain in kept:
        nodes = []
        for step in chain:
            role = step.get("role", "?")
            detail = {
                "base": step.get("spec", ""),
                "unlearned": f"{step.get('method', '')} · lr {step.get('lr', '')} · {step.get('steps', '')} steps",
                "recovered": f"{len(step.get('attacks', []))} recovery conditions; weights unchanged",
            }.get(role, ", ".join(f"{k}={v}" for k, v in step.items() if k != "role"))
            nodes.append(f'<span class="node"><b>{_e(role)}</b>{_e(detail)}</span>')
        rows.append('<div class="chain">' + '<span class="arrow">→</span>'.join(nodes) + "</div>")
    return "".join(rows)


def _evaluate(d: Path) -> str:
    summary = _read_json(d / "summary.json")
    parts = [
        f"<p>Accuracy <b>{summary.get('accuracy', float('nan')):.3f}</b> over {summary.get('n_items', '?')} items "
        f"({_e(summary.get('model', ''))}, judge {_e(summary.get('judge', ''))}).</p>"
    ]
    by_split = summary.get("accuracy_by_split") or {}
    if by_split:
        parts.append(
            _table(
                pd.DataFrame(
                    {
                        "split": list(by_split),
                        "accuracy": list(by_split.values()),
                        "items": [summary.get("n_by_split", {}).get(k) for k in by_split],
                    }
                )
            )
        )
    items = d / "items.csv"
    if items.is_file():
        df = pd.read_csv(items, keep_default_na=False)
        cols = [
            c for c in ("item_id", "split", "question", "answer", "generation", "correct", "logprob", "rank") if c in df
        ]
        parts.append(f"<details><summary>Per-item answers ({len(df)})</summary>{_table(df[cols])}</details>")
    return "".join(parts)


def _unlearn(d: Path) -> str:
    s = _read_json(d / "summary.json")
    rows = pd.DataFrame(
        [
            {
                "method": s.get("method"),
                "forget acc before": s.get("forget_accuracy_before"),
                "forget acc after": s.get("forget_accuracy_after"),
                "retain acc before": s.get("retain_accuracy_before"),
                "retain acc after": s.get("retain_accuracy_after"),
                "weight delta norm": s.get("weight_delta_norm"),
                "steps": s.get("steps"),
                "lr": _fmt(s.get("lr"), "g"),
                "seconds": s.get("train_seconds"),
            }
        ]
    )
    return _table(rows) + _img(d / "dynamics.png", "unlearning dynamics")


def _attribute(d: Path, meta: dict[str, Any]) -> str:
    s = _read_json(d / "summary.json")
    cfg = meta.get("config", {})
    parts = [
        f"<p>Method <b>{_e(s.get('method', cfg.get('method', '')))}</b> ({_e(s.get('level', ''))} level, target "
        f"{_e(s.get('target', ''))}) on {s.get('n_items', '?')} items; keyword hit rate "
        f"<b>{_fmt(s.get('keyword_hit_rate'), '.3f') or '—'}</b>.</p>"
    ]
    kt = (s.get("comparison") or {}).get("keytoken_change") or {}
    if kt:
        scopes = [("all items", kt)] + [(f"{split} items", v) for split, v in (kt.get("by_split") or {}).items()]
        rows = [
            {
                "items": scope,
                "units": name,
                "before": v.get("before"),
                "after": v.get("after"),
                "change": v.get("change", (v.get("after") or 0) - (v.get("before") or 0)),
            }
            for scope, groups in scopes
            for name, v in groups.items()
            if isinstance(v, dict) and v.get("before") is not None
        ]
        parts.append("<h3>KeyToken shift (mean contribution, original → unlearned)</h3>" + _table(pd.DataFrame(rows)))
    results = d / "results.csv"
    if results.is_file():
        df = pd.read_csv(results, keep_default_na=False, na_values=[""])
        units = df[df["metric"] == "contribution"] if "metric" in df else df.iloc[:0]
        if len(units) and "token" in units:
            ids = list(dict.fromkeys(units["item_id"]))[:MAX_HEATMAP_ITEMS]
            units = units[units["item_id"].isin(ids)]
            for col in ("is_keytoken", "is_keyword"):
                if col in units:
                    units[col] = units[col].astype(str).str.lower().isin(["true", "1", "1.0"])
            note = f" (first {MAX_HEATMAP_ITEMS} items)" if len(ids) == MAX_HEATMAP_ITEMS else ""
            parts.append(f"<h3>Token contributions{note}</h3>" + token_heatmap_section(units))
    for png, alt in (
        ("residual_components.png", "layer x component"),
        ("logit_lens.png", "logit lens"),
        ("attention_heads.png", "layer x head"),
    ):
        parts.append(_img(d / png, alt))
    return "".join(parts)


def _recover(d: Path) -> str:
    s = _read_json(d / "summary.json")

    def destruction(split: str) -> str:
        value = s.get(f"{split}_destructive_rate")
        if value is None:
            return "—"
        return (f"<b>{_fmt(value, '.3f')}</b> [{_fmt(s.get(f'{split}_destructive_rate_ci_low'), '.3f')}, "
                f"{_fmt(s.get(f'{split}_destructive_rate_ci_high'), '.3f')}]")  # fmt: skip

    parts = [
        f"<p>{s.get('n_eligible', '?')} of {s.get('n_forget', '?')} forget items were forgotten (original right, "
        f"unlearned wrong). Destructive rate on the held-out utility items: {destruction('utility')}; on the retain "
        f"items the retain loss trains on: {destruction('retain')}. Keywords: {_e(s.get('keyword_source', ''))}.</p>"
    ]
    rates = d / "rates.csv"
    if rates.is_file():
        parts.append(_table(rates_display(pd.read_csv(rates))))
        parts.append(
            '<p class="meta">recovery: rate [exact 95% CI] (recovered / eligible); random control: the same '
            "emphasis on random non-keyword words (prompt) or token positions (activations); p: exact McNemar test "
            "against it on the same items, Holm-adjusted over the conditions; original / utility accuracy: without → "
            "with the emphasis; top-1: share of eligible items whose gold first token is ranked first.</p>"
        )
    parts.append(_img(d / "recovery_rates.png", "recovery rates"))
    parts.append(_img(d / "ablation.png", "layer ablation"))
    return "".join(parts)


def _pair(df: pd.DataFrame, before: str, after: str) -> pd.Series:
    if before not in df or after not in df:
        return pd.Series([""] * len(df), index=df.index)
    return [("" if pd.isna(a) or pd.isna(b) else f"{a:.2f} → {b:.2f}") for a, b in zip(df[before], df[after])]


def rates_display(df: pd.DataFrame) -> pd.DataFrame:
    """Compact view of a recovery ``rates.csv``: one readable string per quantity."""
    out = pd.DataFrame({"kind": df["kind"], "condition": df["condition"]})
    out["recovery"] = [
        "n/a" if pd.isna(r) else f"{r:.2f} [{lo:.2f}, {hi:.2f}] ({int(k)}/{int(n)})"
        for r, lo, hi, k, n in zip(df["recovery_rate"], df["ci_low"], df["ci_high"], df["recovered"], df["n_eligible"])
    ]
    out["random control"] = [
        ("" if pd.isna(v) else f"{v:.2f}") for v in df.get("random_control_rate", pd.Series([float("nan")] * len(df)))
    ]
    out["p (Holm)"] = [("" if pd.isna(v) else f"{v:.3f}") for v in df["p_vs_random_holm"]]
    out["original acc"] = _pair(df, "original_accuracy_before", "original_accuracy_after")
    out["utility acc"] = _pair(df, "utility_accuracy_before", "utility_accuracy_after")
    if df[["retain_accuracy_before"]].notna().any().any():
        out["retain acc"] = _pair(df, "retain_accuracy_before", "retain_accuracy_after")
    out["top-1"] = _pair(df, "top1_before", "top1_after")
    if "gap_fraction" in df:
        out["gap closed"] = [("" if pd.isna(v) else f"{v:.2f}") for v in df["gap_fraction"]]
    if "mean_logprob_gain" in df:
        out["Δ LP"] = [("" if pd.isna(v) else f"{v:+.2f}") for v in df["mean_logprob_gain"]]
    return out


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else format(value, spec)


def headline_display(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Compact view of the demo's ``summary.json["methods"]``: one row per unlearning method."""
    out = []
    for r in rows:
        row = {
            "method": r.get("method"),
            "forget acc": f"{_fmt(r.get('forget_acc_before'))} → {_fmt(r.get('forget_acc_after'))}",
            "utility acc": f"{_fmt(r.get('utility_acc_before'))} → {_fmt(r.get('utility_acc_after'))}",
            "retain acc (trained on)": f"{_fmt(r.get('retain_acc_before'))} → {_fmt(r.get('retain_acc_after'))}",
            "KeyToken contribution": f"{_fmt(r.get('keytoken_contribution_before'))} → "
            f"{_fmt(r.get('keytoken_contribution_after'))}",
            "other words": f"{_fmt(r.get('other_contribution_before'))} → {_fmt(r.get('other_contribution_after'))}",
            "forgotten items": r.get("eligible"),
        }
        for label in ("prompt", "activation"):
            name = r.get(f"best_{label}") or ""
            ctrl = r.get(f"best_{label}_random_control")
            row[f"best {label} recovery"] = (
                (
                    f"{name}: {_fmt(r.get(f'best_{label}_recovery'))}"
                    + (f" (random {_fmt(ctrl)})" if ctrl is not None else "")
                )
                if name
                else ""
            )
        row["destructive rate (utility)"] = _fmt(r.get("utility_destructive_rate"))
        if r.get("battery_worst"):
            row["is it gone? worst case"] = (
                f"{r['battery_worst']}: {_fmt(r.get('battery_worst_recovery'))} "
                f"[{_fmt(r.get('battery_worst_ci_low'))}, {_fmt(r.get('battery_worst_ci_high'))}] "
                f"(max of {r.get('battery_of')}; original {_fmt(r.get('battery_worst_original_after'))})"
            )
        out.append(row)
    return pd.DataFrame(out)


def _headline(run_dir: Path) -> str:
    s = _read_json(run_dir / "summary.json")
    table = s.get("methods") if isinstance(s.get("methods"), list) else None
    if not table:
        return ""
    return (
        "<h2>Headline</h2>"
        + _table(headline_display(table))
        + '<p class="meta">forget/retain acc: greedy accuracy before → after unlearning; KeyToken contribution: mean '
        "occlusion score, on the forget items, of the original's KeyTokens (other words: the rest), original → "
        "unlearned model; best "
        "recovery: the emphasis that brought back most forgotten items (random: the same emphasis on random "
        "non-keyword words); destructive rate: retain items the unlearning broke.</p>"
    )


def _is_it_gone(root: Path, stages: list[tuple[Path, dict[str, Any]]]) -> str:
    """The "is it gone?" section: every recovery run of the directory as one models x conditions heatmap (written
    to ``is_it_gone.png`` beside report.html) and the worst case per model. Empty when there is no recovery run."""
    from unpact_mech.report.recovery_plots import battery_matrix, plot_battery_heatmap

    rates = {}
    for d, meta in stages:
        if meta.get("command") == "recover" and (d / "rates.csv").is_file():
            name = d.name if d != root else "unlearned"
            table = pd.read_csv(d / "rates.csv")
            rates[name] = pd.concat([rates[name], table]) if name in rates else table
    matrix = battery_matrix(rates)
    if not len(matrix):
        return ""
    plot_battery_heatmap(matrix, root / "is_it_gone.png")
    worst = []
    for model, g in matrix.dropna(subset=["recovery_rate"]).groupby("model", sort=False):
        r = g.loc[g["recovery_rate"].idxmax()]
        worst.append({"unlearned model": model, "worst case": r["condition"], "family": r.get("family", ""),
                      "recovery": f"{r['recovery_rate']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                                  f"({int(r['recovered'])}/{int(r['n_eligible'])})",
                      "of conditions": len(g)})  # fmt: skip
    return (
        "<h2>Is it really gone?</h2>"
        + _img(root / "is_it_gone.png", "recovery rate per unlearned model and condition")
        + _table(pd.DataFrame(worst))
        + '<p class="meta">Every recovery condition run on each unlearned model (keyword emphasis and the battery: '
        "quantization, relearning, logit lens, direction ablation, few-shot, rephrasing): the share of the eligible "
        "forget items (original right, unlearned wrong) answered again, k/n and the exact 95% interval per cell. "
        "The worst case is the maximum over the conditions run, which is optimistic for the attacker when there are "
        "many; the per-condition tables below give the controls and paired tests.</p>"
    )


RENDERERS = {"evaluate": _evaluate, "unlearn": _unlearn, "recover": _recover}
ORDER = ("demo", "evaluate", "unlearn", "attribute", "recover")


def build_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    """(Re)build ``run_dir/report.html`` from the stage outputs found under ``run_dir``."""
    root = Path(run_dir)
    if not root.is_dir():
        raise InputError(f"run directory {run_dir} does not exist")
    stages = _stages(root)
    if not stages:
        raise InputError(f"{run_dir}: no run.json found (not an unpact output directory)")
    top = _read_json(root / "run.json")
    title = title or f"unpact-mech report · {top.get('command', stages[0][1].get('command', ''))} · {root.name}"
    sections, nav = [], []
    for command in ORDER:
        for d, meta in (st for st in stages if st[1].get("command") == command):
            if command == "demo":
                continue
            anchor = f"s{len(sections)}"
            body = _attribute(d, meta) if command == "attribute" else RENDERERS[command](d)
            label = f"{command}: {_rel(d, root)}"
            nav.append(f'<a href="#{anchor}">{_e(label)}</a>')
            sections.append(
                f'<section class="stage" id="{anchor}"><h2>{_e(label)}</h2><p class="path">{_e(d)}</p>{body}</section>'
            )
    versions = top.get("versions") or stages[0][1].get("versions") or {}
    header = (
        f"<h1>{_e(title)}</h1><p class='meta'>created {_e(top.get('created', ''))} · seed {_e(top.get('seed', ''))} · "
        + " · ".join(f"{_e(k)} {_e(v)}" for k, v in versions.items())
        + "</p>"
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{REPORT_CSS}</style></head>\n<body>{header}"
        f"<nav>{''.join(nav)}</nav><h2>Lineage</h2>{_lineage(stages)}{_headline(root)}{_is_it_gone(root, stages)}"
        + "".join(sections)
        + "\n</body></html>\n"
    )
    out = root / "report.html"
    atomic_write_text(out, page)
    return out
