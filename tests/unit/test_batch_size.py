"""``--batch-size auto`` (models/batch_size.py): the search against a simulated device memory, the CPU rule by hand,
and the resolution on the ``tiny`` model."""

from __future__ import annotations

import pytest
import torch

from unpact_mech.errors import InputError
from unpact_mech.models.batch_size import (
    AUTO,
    is_out_of_memory,
    largest_fitting,
    memory_rule,
    resolve_batch_size,
    row_bytes,
)


class Device:
    """A fake accelerator that runs out of memory above ``limit`` rows; records the batches tried."""

    def __init__(self, limit: int) -> None:
        self.limit, self.tried = limit, []

    def __call__(self, batch: int) -> None:
        self.tried.append(batch)
        if batch > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("limit", [1, 2, 3, 37, 64, 100, 1023])
def test_largest_fitting_finds_the_limit(limit):
    dev = Device(limit)
    assert largest_fitting(dev, cap=1024) == limit
    assert len(dev.tried) <= 2 * 11  # doubling then bisection: logarithmic


def test_largest_fitting_stops_at_the_cap_and_refuses_nothing_fitting():
    assert largest_fitting(Device(10_000), cap=1024) == 1024
    assert largest_fitting(Device(10_000), cap=100) == 100
    assert largest_fitting(Device(70), cap=100) == 70
    with pytest.raises(InputError, match="not even one sequence fits"):
        largest_fitting(Device(0))


def test_only_out_of_memory_is_an_answer():
    def broken(batch: int) -> None:
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        largest_fitting(broken)
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GiB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_memory_rule_by_hand():
    assert memory_rule(per_row_bytes=10, free_bytes=1000, cap=64) == 50  # 1000 / 2 / 10
    assert memory_rule(per_row_bytes=10, free_bytes=10_000, cap=64) == 64
    assert memory_rule(per_row_bytes=10_000, free_bytes=1000, cap=64) == 1


def test_resolve_on_tiny(tiny_model, monkeypatch):
    assert resolve_batch_size(tiny_model, 12, seq=40, default=64) == 12
    assert resolve_batch_size(tiny_model, AUTO, seq=40, default=64) == 64  # plenty of memory for tiny on this machine
    per_row = row_bytes(tiny_model, 40)
    # 2 layers x 2 (k, v) x 40 tokens x 2 kv heads x 32 dims x 4 bytes = 40960 bytes of KV cache, and more besides
    assert per_row > 2 * 2 * 40 * 2 * 32 * 4
    monkeypatch.setattr("unpact_mech.models.batch_size.free_cpu_bytes", lambda: 2 * 5 * per_row)
    assert resolve_batch_size(tiny_model, AUTO, seq=40, default=64) == 5


def test_cli_batch_size_auto(tmp_path, capsys):
    """``evaluate --batch-size auto`` resolves to a number recorded in run.json and gives the default run's table;
    ``unlearn`` refuses ``auto`` (its batch is a training hyperparameter)."""
    import json

    import pandas as pd

    from tests.cli_helpers import run_cli

    base = ["evaluate", "--model", "tiny", "--data", "builtin:synthetic_facts", "--quiet"]
    assert run_cli([*base, "--batch-size", "auto", "--out", tmp_path / "auto"], capsys)[0] == 0
    assert run_cli([*base, "--batch-size", "3", "--out", tmp_path / "three"], capsys)[0] == 0
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["config"]["batch_size"] == 64
    auto, three = (pd.read_csv(tmp_path / d / "items.csv") for d in ("auto", "three"))
    assert auto["generation"].tolist() == three["generation"].tolist()
    code, _, err = run_cli(["unlearn", "--model", "tiny", "--batch-size", "auto", "--out", tmp_path / "u"], capsys)
    assert code == 2 and "--batch-size: expected an integer, got 'auto'" in err
