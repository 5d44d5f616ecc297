"""Helpers shared by the CLI tests: run ``unpact`` in-process, and fingerprint a directory tree."""

from __future__ import annotations

from pathlib import Path

from unpact_mech.cli import main
from unpact_mech.io.results import sha256_file


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``unpact ARGV`` in-process; return ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tree_digest(path: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``path`` (to assert a directory was left untouched)."""
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(Path(path).rglob("*")) if p.is_file()}
