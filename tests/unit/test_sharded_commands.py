"""``unpact evaluate`` / ``recover`` / ``attribute`` split their items over the processes of an ``accelerate launch``
and write what one process writes (unpact_mech/distributed.py).

The launch is the documented one (docs/unlearning.md, "Several processes: evaluate, attribute, recover"):
``accelerate launch --config_file configs/accelerate/ddp.yaml`` = ``--multi_gpu --num_processes 2`` as in
tests/unit/unlearning/test_distributed.py (torchrun, gloo without a GPU; ``--cpu --num_processes 2`` starts ONE
process on this machine). One launch runs all the commands through tests/unit/sharded_worker.py
(``unpact_mech.cli.main`` per command, recording the size of every ``evaluate_items`` call of each process); each
output is compared with the same command run on one process. Discrete columns (answers, correctness, ranks, keywords,
eligible items, counts) must be identical, floating-point ones equal within 1e-5 (a share is evaluated in batches of
its own, which may change the last bits of a log-prob).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_helpers import run_cli
from tests.unit.test_multiple_choice import WMDP_ROWS
from unpact_mech.distributed import (
    merge_frames,
    process_rank_and_count,
    remap_interventions,
    shard,
    shard_positions,
    unshard,
)

WORKER = Path(__file__).with_name("sharded_worker.py")
DDP_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "ddp.yaml"  # the documented launch
TOL = 1e-5


# -- the pure helpers -------------------------------------------------------------------------------------------------
def test_shard_is_strided_and_unshard_inverts_it():
    items = list("abcdefg")
    assert [shard(items, r, 3) for r in range(3)] == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert [list(shard_positions(7, r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert unshard([["a", "d", "g"], ["b", "e"], ["c", "f"]]) == items
    assert shard(items, 0, 1) == items and unshard([items]) == items
    for n in range(6):
        for world in range(1, 5):
            seq = list(range(n))
            parts = [shard(seq, r, world) for r in range(world)]
            assert sorted(x for p in parts for x in p) == seq  # every item exactly once
            assert unshard(parts) == seq


def test_more_processes_than_items():
    assert [shard(["x", "y"], r, 4) for r in range(4)] == [["x"], ["y"], [], []]
    assert unshard([["x"], ["y"], [], []]) == ["x", "y"]
    assert unshard([[], [], []]) == []
    assert shard([], 2, 3) == []


def test_unshard_and_shard_refuse_what_a_strided_split_cannot_give():
    with pytest.raises(ValueError, match="strided split"):
        unshard([["a"], ["b", "c"]])  # process 1 cannot hold more than process 0
    with pytest.raises(ValueError, match="rank"):
        shard([1, 2], 2, 2)


def test_merge_frames_restores_the_item_order():
    whole = pd.DataFrame({"item_id": list("abcde"), "value": [0.5, 1.0, 1.5, 2.0, 2.5], "rank": [4, 3, 2, 1, 0]})
    parts = [whole.iloc[list(shard_positions(5, r, 2))].reset_index(drop=True) for r in range(2)]
    assert list(parts[0]["item_id"]) == ["a", "c", "e"]
    pd.testing.assert_frame_equal(merge_frames(parts), whole)
    # more processes than items: empty shares come back as None (or an empty frame)
    three = [whole.iloc[[0]], whole.iloc[[1]], None, whole.iloc[:0]]
    pd.testing.assert_frame_equal(merge_frames(three), whole.iloc[:2])
    assert merge_frames([None, None]).empty
    with pytest.raises(ValueError):
        merge_frames([whole.iloc[:1], whole.iloc[1:]])


def test_interventions_of_a_share_address_the_whole_item_list():
    from unpact_mech.scoring.batching import BatchLayout

    seen = []
    factory = remap_interventions(lambda layout: seen.append(layout.items) or [], shard_positions(7, 1, 3))
    factory(BatchLayout(items=(1, 0), offsets=(0, 0), prompt_lens=(3, 3), width=3))
    assert seen == [(4, 1)]  # share 1 of 3 is items 1 and 4
    assert remap_interventions(None, [0]) is None


def test_one_process_without_a_launch():
    assert process_rank_and_count() == (0, 1)


# -- the commands under two processes -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate(data, out) -> list[str]:
    return ["evaluate", "--model", "tiny", "--backend", "transformer_lens", "--data", data, "--quiet", "--out", out]


def _recover(unlearned, out) -> list[str]:
    # keyword occlusion (sharded), a prompt strategy, activation edits (interventions addressing the whole item list;
    # steer fitted on all items), a relearning copy trained on every process (must not become DDP), a read-out (kept on
    # every process), the layer ablation of patch and pasta
    return [
        "recover", "--original", "tiny", "--unlearned", unlearned, "--backend", "transformer_lens",
        "--data", "builtin:synthetic_facts", "--quiet", "--out", out, "--strategy", "focus",
        "--intervention", "patch", "pasta", "--attack", "steer", "relearn_unrelated:steps=2", "logit_lens",
        "--ablation", "--ablation-layers", "0+1",
    ]  # fmt: skip


def _attribute(unlearned, out) -> list[str]:
    return [
        "attribute", "--model", "tiny", "--compare-to", unlearned, "--backend", "transformer_lens",
        "--data", "builtin:synthetic_facts", "--quiet", "--out", out, "--method", "occlusion", "--level", "word",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_item(tmp_path_factory, synthetic_items) -> Path:
    item = synthetic_items[0]
    path = tmp_path_factory.mktemp("one") / "one.jsonl"
    path.write_text(json.dumps({"id": item.id, "question": item.question, "answer": item.answer, "split": "forget"}))
    return path


@pytest.fixture(scope="module")
def wmdp(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wmdp") / "wmdp.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in WMDP_ROWS))
    return path


@pytest.fixture(scope="module")
def launched(tmp_path_factory, ga_unlearned_dir, one_item, wmdp) -> tuple[Path, list[dict]]:
    """ONE launch of 2 processes running evaluate (32 items), evaluate (1 item: more processes than items), evaluate
    --mc-scoring loglik (5 multiple-choice items), recover and attribute; returns the directory holding their outputs
    and each process's record."""
    root = tmp_path_factory.mktemp("sharded")
    commands = [
        _evaluate("builtin:synthetic_facts", root / "evaluate"),
        _evaluate(one_item, root / "evaluate_one"),
        [*_evaluate(wmdp, root / "evaluate_mc"), "--mc-scoring", "loglik"],
        _recover(ga_unlearned_dir, root / "recover"),
        _attribute(ga_unlearned_dir, root / "attribute"),
    ]
    argv = [str(a) for c in commands for a in ["--next", *c]][1:]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
        "--main_process_port", str(_free_port()), str(WORKER), str(root), *argv,
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("accuracy 1.000 over 32 items") == 1, res.stdout  # only the main process prints
    return root, [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]


def _same_value(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same_value(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_value(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=TOL, abs_tol=TOL), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _same_outputs(one: Path, two: Path, tables: set[str]) -> None:
    """Every file but run.json (its --out and time differ) and the pictures: CSVs column by column, JSON by value."""
    names = {p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file()}
    assert names == {p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file()}
    assert tables <= names
    for name in sorted(names):
        if name.endswith(".csv"):
            a, b = pd.read_csv(one / name), pd.read_csv(two / name)
            assert list(a.columns) == list(b.columns) and a.shape == b.shape, name
            for col in a.columns:
                if a[col].dtype.kind == "f" or b[col].dtype.kind == "f":
                    pd.testing.assert_series_equal(a[col], b[col], check_dtype=False, rtol=TOL, atol=TOL, obj=name)
                else:
                    pd.testing.assert_series_equal(a[col], b[col], obj=name)
        elif name.endswith(".json") and name != "run.json":
            _same_value(json.loads((one / name).read_text()), json.loads((two / name).read_text()), name)


def _run_one(argv, capsys) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err


def test_launch_writes_only_the_outputs(launched):
    root, records = launched
    assert [r["codes"] for r in records] == [[0] * 5] * 2
    written = {p.name for p in root.iterdir()}  # no temporary directory of another process left behind
    assert written == {"evaluate", "evaluate_one", "evaluate_mc", "recover", "attribute", "rank0.json", "rank1.json"}


def test_sharded_evaluate_equals_one_process(launched, tmp_path, capsys, one_item):
    root, records = launched
    assert [r["calls"][0] for r in records] == [[16], [16]]  # each process evaluated its half
    assert [r["calls"][1] for r in records] == [[1], []]  # one item: the second process had nothing to evaluate
    _run_one(_evaluate("builtin:synthetic_facts", tmp_path / "one"), capsys)
    _same_outputs(tmp_path / "one", root / "evaluate", {"items.csv", "results.csv", "summary.json"})
    _run_one(_evaluate(one_item, tmp_path / "one_item"), capsys)
    _same_outputs(tmp_path / "one_item", root / "evaluate_one", {"items.csv", "results.csv", "summary.json"})


def test_sharded_multiple_choice_evaluate_equals_one_process(launched, tmp_path, capsys, wmdp):
    root, _ = launched
    _run_one([*_evaluate(wmdp, tmp_path / "one"), "--mc-scoring", "loglik"], capsys)
    _same_outputs(tmp_path / "one", root / "evaluate_mc", {"items.csv", "results.csv", "summary.json"})


def test_sharded_recover_equals_one_process(launched, tmp_path, capsys, ga_unlearned_dir):
    root, records = launched
    for record in records:  # no evaluation of the whole data set on either process: the baselines were split
        assert 0 < max(record["calls"][3]) <= 16
    _run_one(_recover(ga_unlearned_dir, tmp_path / "one"), capsys)
    _same_outputs(
        tmp_path / "one",
        root / "recover",
        {"rates.csv", "per_item.csv", "results.csv", "keywords.csv", "ablation.csv", "summary.json"},
    )
    summary = json.loads((root / "recover" / "summary.json").read_text())
    assert summary["n_eligible"] > 0 and "relearn_unrelated[k2]" in summary["recovery_rate"]


def test_sharded_attribute_equals_one_process(launched, tmp_path, capsys, ga_unlearned_dir):
    root, _ = launched
    _run_one(_attribute(ga_unlearned_dir, tmp_path / "one"), capsys)
    _same_outputs(tmp_path / "one", root / "attribute", {"results.csv", "comparison.csv", "summary.json"})


def _doc_commands(doc: Path, section: str) -> list[str]:
    """The commands of the first ```bash block under the heading ``section`` of ``doc`` (continuations joined)."""
    text = doc.read_text()
    start = text.index(section)
    block = text[text.index("```bash", start) + len("```bash") : text.index("```", text.index("```bash", start) + 7)]
    return [" ".join(c.split()) for c in block.replace("\\\n", " ").strip().splitlines() if c.strip()]


@pytest.mark.parametrize(
    ("doc", "section", "commands"),
    [
        (
            Path("docs") / "unlearning.md",
            "Several processes: evaluate, attribute, recover",
            {"evaluate", "recover", "attribute"},
        ),
        (Path("README.md"), "On several GPUs", {"evaluate", "unlearn", "recover"}),
    ],
)  # fmt: skip
def test_the_documented_launches_are_the_tested_ones(doc, section, commands):
    """The docs' several-process commands (docs/unlearning.md, "Several processes: evaluate, attribute, recover";
    README.md, "On several GPUs") use the launch this file's ``launched`` fixture runs — the same accelerate config
    file, ``-m unpact_mech.cli`` — for the commands it (and tests/unit/unlearning/test_distributed.py, for unlearn)
    runs; only the model, data and flags differ (tiny here)."""
    root = Path(__file__).resolve().parents[2]
    found = _doc_commands(root / doc, section)
    prefix = f"accelerate launch --config_file {DDP_CONFIG.relative_to(root).as_posix()} -m unpact_mech.cli "
    assert found and all(c.startswith(prefix) for c in found), found
    assert {c.removeprefix(prefix).split()[0] for c in found} == commands
    assert (root / "unpact_mech" / "cli.py").read_text().count('if __name__ == "__main__"') == 1  # `-m` runs main
