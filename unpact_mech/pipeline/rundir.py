"""The run directory of a study: chosen or validated before any work, never an existing one."""

from __future__ import annotations

from pathlib import Path

from unpact_mech.errors import InputError
from unpact_mech.pipeline.presets import RUNS_DIR, default_out, interrupted_runs


def new_run_dir(out: str | Path | None, model: str, *, prefix: str) -> tuple[Path, list[str]]:
    """``(run directory, notes)``. ``out`` must not exist (runs are never overwritten) and its parent must; default:
    a new time-stamped ``unpact-runs/<prefix>-<model>-...`` (``unpact-runs/`` is created only after every check).
    The notes name temporary directories that interrupted earlier runs left next to it."""
    from unpact_mech.io import prepare_output_path

    path = default_out(model, prefix=prefix) if out is None else Path(out)
    if path.exists():
        kind = "a directory" if path.is_dir() else "a file"
        raise InputError(f"--out {path}: already exists ({kind}); give a new path (runs are never overwritten)")
    if out is None:
        RUNS_DIR.mkdir(exist_ok=True)
    prepare_output_path(path)
    notes = []
    stale = interrupted_runs(path, prefix)
    if stale:
        notes.append(
            f"{len(stale)} interrupted earlier {prefix} run(s) left partial files (not used; safe to delete): "
            + ", ".join(str(p) for p in stale[:3])
            + (" ..." if len(stale) > 3 else "")
        )
    return path, notes
