"""Benchmark harness: every speed claim is a ratio against a reference measured in the same run.

``compare(benchmark, name, candidate, reference, rounds=, key=)`` times candidate and reference interleaved (to
cancel drift and contention), feeds the candidate's timings to pytest-benchmark (for its table and JSON), stores both
medians and the ratio in ``benchmark.extra_info``, and lists all ratios at the end of the run. The ratios are also
written to ``bench-results/ratios.json`` (a flat object ``key -> ours / reference``; ``key`` defaults to a slug of
``name``), which ``make bench`` leaves for scripts and the README.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

_RATIOS: list[tuple[str, float, float, float, str]] = []
_KEYED: dict[str, float] = {}
#: Where the flat ``key -> ratio`` JSON of a run goes (repository root).
RATIOS_JSON = Path(__file__).resolve().parents[2] / "bench-results" / "ratios.json"


def slug(name: str) -> str:
    """``"hooked forward 8x64 (nnsight) vs plain HF"`` -> ``"hooked_forward_8x64_nnsight_vs_plain_hf"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.fixture
def compare():
    def run(
        benchmark, name: str, candidate, reference, *, rounds: int = 5, warmup: int = 1, goal: str = "",
        key: str | None = None,
    ) -> float:  # fmt: skip
        ref: list[float] = []
        for _ in range(warmup):
            reference()
        # pedantic calls `setup` (untimed by pytest-benchmark) before every round: we time the reference there,
        # so reference and candidate rounds alternate.
        benchmark.pedantic(candidate, setup=lambda: ref.append(_time(reference)), rounds=rounds, warmup_rounds=warmup)
        med_c, med_r = benchmark.stats.stats.median, statistics.median(ref)
        ratio = med_c / med_r
        benchmark.extra_info.update(candidate_median_s=med_c, reference_median_s=med_r, ratio=ratio, goal=goal)
        _RATIOS.append((name, med_c, med_r, ratio, goal))
        _KEYED[key or slug(name)] = ratio
        return ratio

    return run


def pytest_terminal_summary(terminalreporter):
    if not _RATIOS:
        return
    tr = terminalreporter
    tr.section("unpact-mech benchmark ratios (candidate / reference, medians, same run)")
    for name, c, r, ratio, goal in _RATIOS:
        tr.write_line(f"{name:<58} {c * 1e3:10.1f} ms / {r * 1e3:10.1f} ms = {ratio:6.3f}x   {goal}")


def pytest_sessionfinish(session, exitstatus):
    """Write ``bench-results/ratios.json`` when the run measured any ratio (merged into an existing file, so a run
    of one benchmark file updates its own keys only)."""
    if not _KEYED:
        return
    RATIOS_JSON.parent.mkdir(exist_ok=True)
    old = json.loads(RATIOS_JSON.read_text()) if RATIOS_JSON.is_file() else {}
    RATIOS_JSON.write_text(json.dumps(old | dict(sorted(_KEYED.items())), indent=2) + "\n")
