"""Atomic writes: an interrupted command leaves either the old result or none, never a half-written one.

Files are written to a temporary sibling and ``os.replace``-d into place. Whole output directories are built in
a temporary sibling directory (``<out>.tmp-XXXX``, its missing parents created first) and renamed into place when
the command succeeds; if the target already existed (``overwrite=True``) it is swapped out only at that last
moment. Output never goes inside an input model directory (:func:`check_outside`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unpact_mech.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling file and an atomic rename (mode 0666 & ~umask)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text variant of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def check_outside(path: str | os.PathLike, model_dir: str | os.PathLike, flag: str = "--out") -> None:
    """Raise :class:`InputError` if ``path`` is the input model directory or inside it (it is never written)."""
    p, m = Path(path).expanduser().resolve(), Path(model_dir).expanduser().resolve()
    if p == m or m in p.parents:
        raise InputError(f"{flag} {path}: inside the input model directory {model_dir} (it is never written to)")


def prepare_output_path(out: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Validate an output directory path before any work starts (so bad input writes nothing).

    Raises :class:`InputError` if ``out`` is an existing file, a non-empty directory (unless ``overwrite``), or
    cannot be created: a missing parent is fine (:func:`atomic_output_dir` creates it) unless the nearest existing
    ancestor is a file or not writable. Nothing is created here.
    """
    path = Path(out).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {out}: exists and is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f"{flag} {out}: directory already exists and is not empty (pass --overwrite to replace it)")
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{flag} {out}: cannot create it, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: cannot create it, {ancestor} is not writable")
    return path


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing ancestors; return the ones created, outermost first."""
    missing = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return list(reversed(missing))


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories :func:`_make_parents` created, innermost first, while they are empty."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:  # not empty: someone else wrote there meanwhile
            break


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to ``out``.

    Missing parents of ``out`` are created first. On any exception the temporary directory and the parents created
    for it are removed and ``out`` is left exactly as it was.
    """
    final = prepare_output_path(out, overwrite=overwrite)
    created = _make_parents(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
