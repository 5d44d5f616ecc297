"""``unpact evaluate`` end to end, and the one-line exit-2 contract for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.cli_helpers import run_cli


def test_help_lists_only_existing_commands():
    res = subprocess.run(
        [sys.executable, "-m", "unpact_mech.cli", "--help"], capture_output=True, text=True, check=True
    )
    from unpact_mech.cli import available_commands

    listed = [c for c in ("demo", "evaluate", "attribute", "unlearn", "recover", "report") if f"    {c} " in res.stdout]
    assert listed == available_commands() and "evaluate" in listed


def test_evaluate_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, err = run_cli(
        ["evaluate", "--model", "tiny", "--data", "builtin:synthetic_facts", "--out", out, "--quiet"], capsys
    )
    assert code == 0, err
    assert "accuracy 1.000 over 32 items" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["items.csv", "results.csv", "run.json", "summary.json"]
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:4]) == ["item_id", "split", "metric", "value"]
    assert set(results.metric) == {"correct", "rouge_l", "logprob", "first_prob", "rank", "truncated"}
    items = pd.read_csv(out / "items.csv").set_index("item_id")
    # the answer text sits next to its scores in the long table
    first = results[results.metric == "correct"].set_index("item_id")
    assert (first.generation == items.loc[first.index, "generation"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_truncated"] == 0  # the tiny model ends every answer well within the cap
    assert summary["accuracy"] == 1.0 and summary["accuracy_by_split"] == {"forget": 1.0, "retain": 1.0, "utility": 1.0}
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "evaluate" and run["seed"] == 0 and run["config"]["model"] == "tiny"
    assert run["lineage"][0]["role"] == "base" and len(run["inputs"]["model"]["sha256"]) == 64
    assert {"torch", "transformers", "transformer-lens", "nnsight"} <= set(run["versions"])
    # same seed, same numbers; --overwrite replaces atomically
    code, _, _ = run_cli(
        [
            "evaluate",
            "--model",
            "tiny",
            "--data",
            "builtin:synthetic_facts",
            "--out",
            out,
            "--quiet",
            "--overwrite",
            "--backend",
            "nnsight",
        ],
        capsys,
    )
    assert code == 0
    again = pd.read_csv(out / "results.csv")
    assert (again.value - results.value).abs().max() < 1e-5


def _data(tmp_path, text, name="d.jsonl"):
    f = tmp_path / name
    f.write_text(text)
    return f


def _bad_cases(tmp_path, llama_dir):
    good = _data(tmp_path, '{"question": "What is the capital of France?", "answer": "Paris"}\n', "good.jsonl")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(llama_dir / "config.json", no_weights / "config.json")
    pickle_only = tmp_path / "pickle_only"
    pickle_only.mkdir()
    shutil.copy(llama_dir / "config.json", pickle_only / "config.json")
    (pickle_only / "pytorch_model.bin").write_bytes(b"not really")
    a_file = _data(tmp_path, "x", "out_file")
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    (full_dir / "keep.txt").write_text("mine")
    long_q = _data(tmp_path, json.dumps({"id": "long", "question": "word " * 90, "answer": "x"}) + "\n", "long.jsonl")
    return {
        "file missing": (["--data", tmp_path / "missing.jsonl"], "does not exist"),
        "not JSON": (["--data", _data(tmp_path, "{oops}\n")], r"d.jsonl:1: not valid JSON"),
        "not an object": (["--data", _data(tmp_path, "[1, 2]\n", "l.jsonl")], "l.jsonl:1: expected a JSON object"),
        "missing question": (
            ["--data", _data(tmp_path, '{"id": "a", "answer": "x"}\n', "q.jsonl")],
            "missing field 'question'",
        ),
        "missing answer": (
            ["--data", _data(tmp_path, '{"id": "a", "question": "Q?"}\n', "a.jsonl")],
            "missing field 'answer'",
        ),
        "empty answer": (
            ["--data", _data(tmp_path, '{"id": "a", "question": "Q?", "answer": ""}\n', "e.jsonl")],
            "field 'answer' is empty",
        ),
        "keyword absent": (
            [
                "--data",
                _data(tmp_path, '{"id": "a", "question": "Q?", "answer": "x", "keywords": ["zebra"]}\n', "k.jsonl"),
            ],
            "keyword 'zebra' does not occur",
        ),
        "unknown model": (["--model", "gpt-7"], "unknown model spec 'gpt-7'"),
        "unknown backend": (["--backend", "pyvene"], "invalid choice: 'pyvene'"),
        "no weights": (["--model", no_weights], "no weights"),
        "pickle only": (["--model", pickle_only], "only pickle weights"),
        "missing model dir": (["--model", tmp_path / "nowhere" / "model"], "does not exist"),
        "too long": (["--model", llama_dir, "--data", long_q], "item 'long': .* exceed the model's context of 64"),
        "out is a file": (["--out", a_file], "exists and is a file"),
        "out not empty": (["--out", full_dir], "not empty"),
        "bad batch size": (["--batch-size", "0"], "must be >= 1"),
    }, good


CASES = [
    "file missing",
    "not JSON",
    "not an object",
    "missing question",
    "missing answer",
    "empty answer",
    "keyword absent",
    "unknown model",
    "unknown backend",
    "no weights",
    "pickle only",
    "missing model dir",
    "too long",
    "out is a file",
    "out not empty",
    "bad batch size",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, llama_dir, capsys):
    import re

    cases, good = _bad_cases(tmp_path, llama_dir)
    extra, message = cases[case]
    out = tmp_path / "out"
    argv = ["evaluate", "--model", llama_dir, "--data", good, "--out", out, "--quiet"] + extra
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unpact: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output dir, no temp dirs
    if case == "out not empty":
        assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_an_answer_cut_at_the_cap_is_flagged(tmp_path, capsys):
    """--max-new-tokens 1 cuts every answer of the tiny model ("M" of "Marrow"): all flagged, wrong, warned about."""
    out = tmp_path / "cut"
    args = ["evaluate", "--model", "tiny", "--data", "builtin:synthetic_facts", "--quiet", "--max-new-tokens", "1"]
    code, _, err = run_cli([*args, "--out", out], capsys)
    assert code == 0, err
    items = pd.read_csv(out / "items.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert (items.truncated == 1.0).all() and summary["n_truncated"] == len(items) == 32
    n_wrong = int((items.correct == 0).sum())
    assert n_wrong > 0 and summary["n_truncated_wrong"] == n_wrong
    assert f"warning: {n_wrong} answers judged wrong reached --max-new-tokens 1 without ending" in err
