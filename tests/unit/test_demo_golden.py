"""Behaviour pin: ``unpact demo --model tiny`` (seed 0) gives the numbers recorded BEFORE the pipeline / attacks /
attribution-registry refactor (tests/golden/demo_tiny.json, written by running this file as a script on the code
before the move: ``python tests/unit/test_demo_golden.py --record``).

Compared: the top-level ``summary.json`` (without its wall-clock ``seconds``) and ``results.csv`` in full, and a
SHA-256 of every stage's ``results.csv`` and of each ``recovery/<method>/rates.csv``. Floats are rounded to 6
significant digits before comparing, so the pin survives last-bit differences between CPUs but not a changed
number. When an issue changes the demo's numbers ON PURPOSE, re-record and say why in the commit message.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "demo_tiny.json"
METHODS = ("ga_gdr", "npo_gdr")
N_BOOT = 200
#: Keys that are not numbers of the study (wall-clock time).
VOLATILE_KEYS = ("seconds",)
#: Per-stage tables pinned by digest (relative glob patterns inside the run directory).
STAGE_TABLES = ("*/**/results.csv", "recovery/*/rates.csv")


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return value if not math.isfinite(value) or value == 0 else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def canonical_table(path: Path) -> pd.DataFrame:
    """A CSV as strings: floats rounded to 6 significant digits, missing values empty."""
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    cells = {
        col: ["" if pd.isna(v) else f"{v:.6g}" if isinstance(v, float) else str(v) for v in frame[col]]
        for col in frame.columns
    }
    return pd.DataFrame(cells, columns=list(frame.columns), dtype=object)


def table_digest(path: Path) -> str:
    return hashlib.sha256(canonical_table(path).to_csv(index=False).encode()).hexdigest()


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """What the pin compares: canonical top-level summary and results, and digests of the stage tables."""
    stage_paths = sorted({p for pattern in STAGE_TABLES for p in run_dir.glob(pattern)})
    return {
        "summary": _round(json.loads((run_dir / "summary.json").read_text())),
        "results": canonical_table(run_dir / "results.csv").to_dict("records"),
        "stage_tables": {p.relative_to(run_dir).as_posix(): table_digest(p) for p in stage_paths},
    }


def run_tiny_demo(out: Path) -> Path:
    from unpact_mech.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(model="tiny", methods=METHODS, n_boot=N_BOOT), out, progress=False, log=lambda _: None).out


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


def test_demo_tiny_summary_and_results_equal_the_recorded_ones(tmp_path, golden):
    now = fingerprint(run_tiny_demo(tmp_path / "run"))
    assert now["summary"] == golden["summary"]
    assert len(now["results"]) == len(golden["results"])
    for i, (row, pinned) in enumerate(zip(now["results"], golden["results"])):
        assert row == pinned, f"results.csv row {i}"
    assert sorted(now["stage_tables"]) == sorted(golden["stage_tables"])
    changed = [name for name, digest in now["stage_tables"].items() if golden["stage_tables"][name] != digest]
    assert not changed, f"stage tables whose numbers changed: {changed}"


def test_the_pin_can_fail(golden):
    """The comparison is sensitive: a changed accuracy or a changed table cell is a different fingerprint."""
    altered = json.loads(json.dumps(golden))
    altered["summary"]["methods"][0]["forget_acc_after"] = _round(golden["summary"]["methods"][0]["forget_acc_after"] + 0.01)
    assert altered["summary"] != golden["summary"]
    assert _round(0.1234564) != _round(0.1234566) and _round(1 / 3) == _round(0.3333334)


if __name__ == "__main__":  # record the pin: python tests/unit/test_demo_golden.py --record
    import tempfile

    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/unit/test_demo_golden.py --record")
    from unpact_mech.runtime import offline_and_quiet

    offline_and_quiet()
    with tempfile.TemporaryDirectory() as tmp:
        data = fingerprint(run_tiny_demo(Path(tmp) / "run"))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"recorded {GOLDEN} ({len(data['results'])} result rows, {len(data['stage_tables'])} stage tables)")
