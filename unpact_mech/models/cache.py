"""Where converted/built models are cached: ``$UNPACT_CACHE`` or ``~/.cache/unpact-mech``.

Cache entries are built in a temporary sibling directory and renamed into place, so a crash never leaves a
half-written model behind and two processes racing to build the same entry both end up with a complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    root = Path(os.environ.get("UNPACT_CACHE") or Path.home() / ".cache" / "unpact-mech").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def build_cached(name: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_root()/name``, running ``build(tmp_dir)`` first if it is not there yet."""
    final = cache_root() / name
    if is_complete(final):
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        if final.exists() and not is_complete(final):  # a stale, incomplete entry (e.g. emptied by hand)
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):  # lost a race only if the winner left a complete entry
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
