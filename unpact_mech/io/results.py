"""The output contract of every command (docs/concepts.md): ``run.json``, ``results.csv``, ``summary.json``.

* ``results.csv`` is long format: one row per (item, metric) with at least ``item_id, split, metric, value`` plus
  whatever identifies the row (model, method, strategy, layer, head, position, token, ...).
* ``summary.json`` holds the headline numbers of the command.
* ``run.json`` holds the command, resolved config, seed, package versions, input hashes and model lineage
  (base -> unlearned -> recovered).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.io.atomic import atomic_write_text

REQUIRED_COLUMNS = ("item_id", "split", "metric", "value")
_VERSIONED = ("unpact-mech", "torch", "transformers", "transformer-lens", "nnsight", "numpy", "pandas", "accelerate")


def _jsonable(obj: Any) -> Any:
    """Convert numpy/pandas/Path scalars so ``json.dumps`` accepts them; NaN/inf become None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, strict JSON."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers (for ``run.json``)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's contents (read-only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RunWriter:
    """Collects what a command did and writes the three contract files into an output directory.

    Start one with :func:`run_record` (the one constructor every command and pipeline stage uses)::

        run = run_record("evaluate", config=vars(args), seed=args.seed, data=args.data, lineage=model.lineage)
        run.write(out_dir, results_df, {"accuracy": 0.9})
    """

    command: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    argv: Sequence[str] = field(default_factory=lambda: list(sys.argv))

    def add_input(self, name: str, path: str | os.PathLike | None, digest: str | None = None) -> None:
        """Record an input file (hashed) or a built-in input (``path=None``, digest given or omitted)."""
        if path is not None and Path(path).is_file():
            digest = digest or sha256_file(path)
        self.inputs[name] = {"path": str(path) if path is not None else "<built-in>", "sha256": digest or ""}

    def metadata(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "argv": list(self.argv),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": self.seed,
            "config": self.config,
            "versions": package_versions(),
            "inputs": self.inputs,
            "lineage": self.lineage,
        }

    def write(self, out_dir: str | os.PathLike, results: pd.DataFrame, summary: Mapping[str, Any]) -> None:
        """Write ``run.json``, ``results.csv`` and ``summary.json`` into ``out_dir``."""
        missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
        if missing:
            raise ValueError(f"results table lacks required columns {missing}")
        out = Path(out_dir)
        write_json(out / "run.json", self.metadata())
        ordered = list(REQUIRED_COLUMNS) + [c for c in results.columns if c not in REQUIRED_COLUMNS]
        atomic_write_text(out / "results.csv", results[ordered].to_csv(index=False))
        write_json(out / "summary.json", dict(summary))


def run_record(
    command: str,
    *,
    config: Mapping[str, Any],
    seed: int | None,
    data: str | os.PathLike | None,
    lineage: Sequence[Mapping[str, Any]] = (),
    argv: Sequence[str] | None = None,
    models: Mapping[str, Any] | None = None,
) -> RunWriter:
    """A :class:`RunWriter` for ``command``: the data input hashed (``builtin:...`` sets recorded as built-in), the
    weights of ``models`` (name -> a model with a ``source_dir``, e.g. a HookedLM) hashed, the lineage copied;
    ``config`` without callables (the CLI's ``run`` callback)."""
    clean = {k: v for k, v in dict(config).items() if not callable(v)}
    run = RunWriter(command, config=clean, seed=seed, argv=list(argv) if argv is not None else list(sys.argv))
    if data is not None:
        text = str(data)
        run.add_input("data", None if text.startswith("builtin:") else text)
    for name, model in (models or {}).items():
        weights = sorted(Path(model.source_dir).glob("*.safetensors"))
        run.add_input(name, weights[0] if weights else model.source_dir)
    run.lineage = [dict(step) for step in lineage]
    return run


def read_results(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Read back ``(results, summary, run)`` from a run directory."""
    run_dir = Path(run_dir)
    results = pd.read_csv(run_dir / "results.csv", keep_default_na=False, na_values=[""])
    summary = json.loads((run_dir / "summary.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    return results, summary, run
