"""Behaviour pin: ``unpact demo --model tiny`` (seed 0) gives the numbers recorded BEFORE the pipeline / attacks /
attribution-registry refactor (tests/golden/demo_tiny/, written by running this file as a script on the code before
the move: ``python tests/unit/test_demo_golden.py --record``).

Compared: the top-level ``summary.json`` (without its wall-clock ``seconds``) and every stage's ``results.csv`` and
``recovery/<method>/rates.csv``: text and integer cells exactly, floats to a relative 1e-3 (absolute 1e-5, or in a
long table 1e-3 of the largest |value| of the same metric: :func:`row_atol`) — loose enough for float-rounding
differences between CPUs, far tighter than any change a code change makes (a different
greedy answer, a different keyword or a different unlearning step moves numbers by whole units of 1/n or by
several percent). When an issue changes the demo's numbers ON PURPOSE, re-record and say why in the commit message.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "demo_tiny"
METHODS = ("ga_gdr", "npo_gdr")
#: Keys that are not numbers of the study (wall-clock time).
VOLATILE_KEYS = ("seconds",)
#: The pinned tables (relative glob patterns inside the run directory).
TABLES = ("results.csv", "*/**/results.csv", "recovery/*/rates.csv")
RTOL, ATOL = 1e-3, 1e-5


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _cell(value: Any) -> str:
    return "" if pd.isna(value) else str(value)


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def pinned_tables(run_dir: Path) -> list[str]:
    return sorted({p.relative_to(run_dir).as_posix() for pattern in TABLES for p in run_dir.glob(pattern)})


def assert_same_json(now: Any, pinned: Any, where: str = "summary") -> None:
    """Equal structure and strings; floats within the tolerance."""
    if isinstance(pinned, dict):
        assert isinstance(now, dict) and sorted(now) == sorted(pinned), (
            f"{where}: keys {sorted(now)} != {sorted(pinned)}"
        )
        for k in pinned:
            assert_same_json(now[k], pinned[k], f"{where}.{k}")
    elif isinstance(pinned, list):
        assert isinstance(now, list) and len(now) == len(pinned), where
        for i, (a, b) in enumerate(zip(now, pinned)):
            assert_same_json(a, b, f"{where}[{i}]")
    elif isinstance(pinned, float) and not isinstance(pinned, bool):
        assert isinstance(now, (int, float)) and math.isclose(now, pinned, rel_tol=RTOL, abs_tol=ATOL), (
            f"{where}: {now} != {pinned}"
        )
    else:
        assert now == pinned, f"{where}: {now!r} != {pinned!r}"


def row_atol(pinned: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """Per row, the absolute tolerance: ``ATOL``, or ``RTOL`` x the largest |value| of the row's ``metric`` in a long
    table (a sum with cancellation, e.g. a layer's direct attention effect of 0.046 among values up to 4, carries
    the rounding error of its largest terms: 2e-4 between two CPUs, measured)."""
    atol = np.full(len(values), ATOL)
    if "metric" in pinned.columns:
        scale = pd.Series(np.abs(values)).groupby(pinned["metric"].to_numpy()).transform("max").to_numpy()
        atol = np.maximum(atol, RTOL * np.nan_to_num(scale))
    return atol


def assert_same_table(now: pd.DataFrame, pinned: pd.DataFrame, name: str) -> None:
    assert list(now.columns) == list(pinned.columns), f"{name}: columns differ"
    assert len(now) == len(pinned), f"{name}: {len(now)} rows, pinned {len(pinned)}"
    for col in pinned.columns:
        a, b = now[col], pinned[col]
        if pd.api.types.is_float_dtype(b) and pd.api.types.is_numeric_dtype(a):
            x, y = a.to_numpy(float), b.to_numpy(float)
            same = np.isclose(x, y, rtol=RTOL, atol=row_atol(pinned, y), equal_nan=True)
            assert same.all(), (
                f"{name}: column {col} differs in {int((~same).sum())} rows, first at row {int(np.argmin(same))}"
            )
        else:
            same = np.array([_cell(x) == _cell(y) for x, y in zip(a, b)], dtype=bool)
            assert same.all(), (
                f"{name}: column {col} differs in {int((~same).sum())} rows, first at row {int(np.argmin(same))}"
            )


def run_tiny_demo(out: Path) -> Path:
    from unpact_mech.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(model="tiny", methods=METHODS), out, progress=False, log=lambda _: None).out


@pytest.fixture(scope="module")
def run_dir(tiny_demo) -> Path:
    """The shared tiny demo run (tests/unit/conftest.py), the same configuration as :func:`run_tiny_demo`."""
    assert tuple(tiny_demo.headline["method"]) == METHODS
    return tiny_demo.out


def test_demo_tiny_summary_equals_the_recorded_one(run_dir):
    now = _strip(json.loads((run_dir / "summary.json").read_text()))
    assert_same_json(now, json.loads((GOLDEN / "summary.json").read_text()))


def test_demo_tiny_tables_equal_the_recorded_ones(run_dir):
    names = pinned_tables(run_dir)
    assert names == sorted(json.loads((GOLDEN / "tables.json").read_text()))
    for name in names:
        assert_same_table(read_table(run_dir / name), read_table(GOLDEN / (name + ".gz")), name)


def test_the_pin_can_fail():
    """The comparison is sensitive: one accuracy moved by one item of 32, or one contribution by 1%, is caught."""
    summary = json.loads((GOLDEN / "summary.json").read_text())
    altered = json.loads(json.dumps(summary))
    altered["methods"][0]["forget_acc_after"] += 1 / 32
    with pytest.raises(AssertionError, match="forget_acc_after"):
        assert_same_json(altered, summary)
    table = read_table(GOLDEN / "results.csv.gz")
    changed = table.copy()
    changed.loc[changed.index[-1], "value"] = changed["value"].iloc[-1] * 1.01 + 1e-3
    with pytest.raises(AssertionError, match="column value"):
        assert_same_table(changed, table, "results.csv")


if __name__ == "__main__":  # record the pin: python tests/unit/test_demo_golden.py --record
    import tempfile

    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/unit/test_demo_golden.py --record")
    from unpact_mech.runtime import offline_and_quiet

    offline_and_quiet()
    with tempfile.TemporaryDirectory() as tmp:
        run = run_tiny_demo(Path(tmp) / "run")
        GOLDEN.mkdir(parents=True, exist_ok=True)
        summary = _strip(json.loads((run / "summary.json").read_text()))
        (GOLDEN / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        names = pinned_tables(run)
        for name in names:
            target = GOLDEN / (name + ".gz")
            target.parent.mkdir(parents=True, exist_ok=True)
            with gzip.GzipFile(target, "wb", mtime=0) as fh:  # mtime 0: the same bytes for the same table
                fh.write((run / name).read_bytes())
        (GOLDEN / "tables.json").write_text(json.dumps(names, indent=1) + "\n")
    print(f"recorded {GOLDEN}: summary.json and {len(names)} tables")
