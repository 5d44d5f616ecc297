"""Atomic output directories, run metadata and result files (the output contract: docs/concepts.md)."""

from unpact_mech.io.atomic import (
    atomic_output_dir,
    atomic_write_bytes,
    atomic_write_text,
    check_outside,
    prepare_output_path,
)
from unpact_mech.io.results import RunWriter, read_results, run_record, write_json

__all__ = [
    "atomic_output_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_outside",
    "prepare_output_path",
    "RunWriter",
    "read_results",
    "run_record",
    "write_json",
]
