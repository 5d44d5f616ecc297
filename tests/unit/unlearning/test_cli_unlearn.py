"""``unpact unlearn`` end to end on the tiny model, a real kill + --resume, and the one-line exit-2 contract."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from tests.cli_helpers import run_cli, tree_digest
from tests.unit.unlearning.conftest import assert_same_weights, weights
from unpact_mech import load_model
from unpact_mech.cli import main
from unpact_mech.models.loading import resolve_spec

BASE = ["unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--quiet"]


def test_unlearn_tiny_end_to_end(tmp_path, capsys):
    tiny_dir = resolve_spec("tiny").path
    before = tree_digest(tiny_dir)
    out = tmp_path / "unl"
    code, stdout, err = run_cli(
        BASE + ["--method", "ga_gdr", "--steps", "3", "--lr", "1e-3", "--eval-every", "2", "--out", out], capsys
    )
    assert code == 0, err
    assert re.search(
        r"ga_gdr: forget accuracy 1\.00 -> [0-9.]+, utility 1\.00 -> [0-9.]+, retain \(trained on\) 1\.00 -> [0-9.]+",
        stdout,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["utility_accuracy_before"] == 1.0 and summary["utility_accuracy_after"] is not None
    assert 0 <= summary["utility_destructive_rate"] <= 1 and "utility_note" not in summary
    files = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "run.json",
        "results.csv",
        "summary.json",
        "dynamics.csv",
        "dynamics.png",
        "training_log.csv",
        "unpact_model.json",
    } <= files
    assert tree_digest(tiny_dir) == before  # the input model directory is never written
    assert not (tmp_path / "unl.checkpoints").exists()

    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "forget_accuracy_before",
        "forget_accuracy_after",
        "retain_accuracy_before",
        "retain_accuracy_after",
        "weight_delta_norm",
    ):
        assert isinstance(summary[key], float), key
    assert summary["forget_accuracy_before"] == 1.0 and summary["forget_accuracy_after"] < 1.0
    assert summary["weight_delta_norm"] > 0 and [d["step"] for d in summary["dynamics"]] == [0, 2, 3]
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:4]) == ["item_id", "split", "metric", "value"]
    assert {"step", "method"} <= set(results.columns) and set(results.step) == {0, 2, 3}
    assert set(results.method) == {"ga_gdr"} and len(results[results.step == 3]) == 32 * 6
    run = json.loads((out / "run.json").read_text())
    assert [r["role"] for r in run["lineage"]] == ["base", "unlearned"]
    assert run["lineage"][1]["method"] == "ga_gdr" and run["lineage"][1]["hyperparameters"] == {
        "alpha": 4.0
    }  # the documented default
    assert run["config"]["resolved"]["steps"] == 3 and run["seed"] == 0
    assert len(pd.read_csv(out / "training_log.csv")) == 3

    # the output is a loadable SPEC carrying its lineage, with the unlearned weights
    again = load_model(out)
    assert [r["role"] for r in again.lineage] == ["base", "unlearned"]
    assert any(not torch.equal(a, b) for a, b in zip(again.parameters(), load_model("tiny").parameters()))
    summary2 = json.loads((out / "summary.json").read_text())
    assert summary2 == summary


def test_killed_cli_run_resumes_to_the_uninterrupted_weights(tmp_path, capsys):
    args = BASE + [
        "--method",
        "ga",
        "--steps",
        "40",
        "--lr",
        "1e-4",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "4",
        "--eval-every",
        "0",
    ]
    straight = tmp_path / "straight"
    code, _, err = run_cli(args + ["--out", straight], capsys)
    assert code == 0, err

    out = tmp_path / "killed"
    ckpt = tmp_path / "killed.checkpoints"
    # the killed run computes its steps with this process's torch thread count (the straight run's and the resumed
    # run's): another count sums in another order, and the weights would differ in the last bits
    proc = subprocess.Popen(
        [sys.executable, "-m", "unpact_mech.cli", *map(str, args), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_dir() and any(p.name.startswith("step-") and "tmp" not in p.name for p in ckpt.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed (machine too fast for this timing)")
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing final written

    code, _, err = run_cli(args + ["--out", out], capsys)  # same command without --resume: refused
    assert code == 2 and "pass --resume" in err and not out.exists()
    code, _, err = run_cli(args + ["--out", out, "--resume"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 4
    assert_same_weights(weights(load_model(out)), weights(load_model(straight)))
    assert not ckpt.exists()  # removed after success (without --keep-checkpoints)


def test_nan_exits_1_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "nan"
    code, _, err = run_cli(
        BASE + ["--method", "ga", "--steps", "20", "--lr", "1e30", "--max-grad-norm", "0", "--out", out], capsys
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"unpact: error: the loss became (nan|inf) at step \d+ of ga", lines[0]), err
    assert list(tmp_path.iterdir()) == []


def test_no_weight_change_exits_1(tmp_path, capsys):
    out = tmp_path / "same"
    code, _, err = run_cli(BASE + ["--method", "ga", "--steps", "2", "--lr", "1e-45", "--out", out], capsys)
    assert code == 1 and "no weight changed" in err and list(tmp_path.iterdir()) == []


def _bad_cases(tmp_path):
    no_forget = tmp_path / "retain_only.jsonl"
    no_forget.write_text(
        json.dumps({"id": "r", "question": "What color is the flag of Pexaro?", "answer": "red", "split": "retain"})
        + "\n"
    )
    forget_only = tmp_path / "forget_only.jsonl"
    forget_only.write_text(
        json.dumps({"id": "f", "question": "What color is the flag of Zorblat?", "answer": "blue", "split": "forget"})
        + "\n"
    )
    tiny_dir = resolve_spec("tiny").path
    return {
        "unknown method": (["--method", "gradient_descent"], "invalid choice: 'gradient_descent'"),
        "empty forget set": (["--method", "ga", "--data", no_forget], "no forget items"),
        "retain method without retain items": (
            ["--method", "npo_klr", "--data", forget_only],
            "npo_klr has a retain term",
        ),
        "lr zero": (["--method", "ga", "--lr", "0"], "--lr must be a finite number > 0, got 0"),
        "lr negative": (["--method", "ga", "--lr", "-0.001"], "--lr must be a finite number > 0"),
        "lr nan": (["--method", "ga", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        "steps zero": (["--method", "ga", "--steps", "0"], "--steps must be an integer >= 1, got 0"),
        "steps negative": (["--method", "ga", "--steps", "-3"], "--steps must be an integer >= 1"),
        "trainable matches nothing": (["--method", "ga", "--trainable", r"transformer\.h\."], "matches no parameter"),
        "trainable invalid": (["--method", "ga", "--trainable", "mlp.("], "not a valid regular expression"),
        "rmu layer out of range": (
            ["--method", "rmu", "--layer", "2"],
            r"layer 2 out of range \(model has layers 0..1\)",
        ),
        "rmu layer negative": (["--method", "rmu", "--layer", "-1"], "layer must be a non-negative integer"),
        "hyperparameter of another method": (["--method", "ga", "--beta", "0.1"], "beta do not apply"),
        "out inside the model dir": (
            ["--method", "ga", "--out", tiny_dir / "unlearned"],
            "inside the input model directory",
        ),
    }


CASES = [
    "unknown method",
    "empty forget set",
    "retain method without retain items",
    "lr zero",
    "lr negative",
    "lr nan",
    "steps zero",
    "steps negative",
    "trainable matches nothing",
    "trainable invalid",
    "rmu layer out of range",
    "rmu layer negative",
    "hyperparameter of another method",
    "out inside the model dir",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    extra, message = _bad_cases(tmp_path)[case]
    tiny_dir = resolve_spec("tiny").path
    model_files = tree_digest(tiny_dir)
    out = tmp_path / "out"
    argv = BASE + ["--steps", "2", "--lr", "1e-3", "--checkpoint-every", "1"] + extra  # the last --lr/--steps wins
    if "--out" not in extra:
        argv += ["--out", out]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unpact: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output dir, no checkpoints, no temp dirs
    assert tree_digest(tiny_dir) == model_files


def test_help_documents_methods_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    text = capsys.readouterr().out
    for name in ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo", "rmu", "task_vector"):
        assert re.search(rf"^  {name}\s+lr [0-9.e-]+, \d+ steps, batch \d+", text, re.M), name
    for flag in (
        "--alpha",
        "--beta",
        "--gamma",
        "--steering-coef",
        "--layer",
        "--scale",
        "--trainable",
        "--resume",
        "--eval-every",
        "--checkpoint-every",
        "--grad-accum",
    ):
        assert flag in text


def test_a_recipe_that_did_not_forget_says_so_and_what_to_change(tmp_path, capsys):
    """1 step at lr 1e-6 cannot forget: one warning line on stderr names --steps, --lr and the stop rule; a recipe
    that forgets (5 steps at 1e-3) gets none."""
    code, stdout, err = run_cli(
        BASE + ["--method", "ga_gdr", "--steps", "1", "--lr", "1e-6", "--out", tmp_path / "weak"], capsys
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "weak" / "summary.json").read_text())
    before, after = summary["forget_accuracy_before"], summary["forget_accuracy_after"]
    assert before > 0 and before - after < before / 2  # it really did not forget
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "warning" not in stdout, err
    assert f"from {before:.2f} to {after:.2f}" in warnings[0]
    advice = ("--steps (it ran 1)", "--lr (it was 1e-06)", "--stop-when-forget-below")
    assert all(flag in warnings[0] for flag in advice)
    assert summary["forget_note"] == warnings[0].removeprefix("warning: ")

    code, _, err = run_cli(BASE + ["--method", "ga", "--steps", "5", "--lr", "1e-3", "--out", tmp_path / "ok"], capsys)
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert code == 0 and summary["forget_accuracy_after"] <= summary["forget_accuracy_before"] / 2
    assert "warning" not in err and "forget_note" not in summary


def test_unlearn_in_python_warns_when_it_did_not_forget(synthetic_items):
    import warnings

    from unpact_mech.unlearning import ForgettingWarning, unlearn

    with pytest.warns(ForgettingWarning, match=r"did not forget; try more --steps \(it ran 1\)"):
        weak = unlearn(load_model("tiny"), synthetic_items, "ga_gdr", steps=1, lr=1e-6, progress=False)
    assert weak.summary["forget_accuracy_after"] > weak.summary["forget_accuracy_before"] / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForgettingWarning)  # a forgetting run must not warn
        strong = unlearn(load_model("tiny"), synthetic_items, "ga", steps=5, lr=1e-3, progress=False)
    assert strong.summary["forget_accuracy_after"] <= strong.summary["forget_accuracy_before"] / 2


def test_the_weak_forgetting_rule():
    from unpact_mech.unlearning import weak_forgetting

    base = {"forget_accuracy_before": 1.0, "steps_run": 3, "lr": 1e-5}
    assert weak_forgetting(base | {"forget_accuracy_after": 0.5}) is None  # down by half: it forgot
    note = weak_forgetting(base | {"forget_accuracy_after": 0.51})
    assert note and "--stop-when-forget-below" in note and "\n" not in note
    assert weak_forgetting(base | {"forget_accuracy_before": 0.0, "forget_accuracy_after": 0.0}) is None  # knew none
    assert weak_forgetting(base | {"forget_accuracy_before": None, "forget_accuracy_after": None}) is None
    # a forget target the user set and met is what they asked for; one not met: no stop rule to suggest
    assert weak_forgetting(base | {"forget_accuracy_after": 0.6, "stop_when_forget_below": 0.6}) is None
    unmet = weak_forgetting(base | {"forget_accuracy_after": 0.8, "stop_when_forget_below": 0.6})
    assert unmet and "--stop-when-forget-below" not in unmet and "--steps" in unmet
    limited = weak_forgetting(base | {"forget_accuracy_after": 0.9, "rejected_steps": [2]})
    assert "--max-utility-drop limit stopped it" in limited and "--stop-when-forget-below" not in limited


def test_a_file_without_utility_items_warns_in_one_line_and_the_summary_says_so(tmp_path, capsys):
    """No held-out utility items: the run still works, one warning line says collateral damage is read on the
    trained-on retain items only, and summary.json carries the same note with empty utility fields."""
    from unpact_mech.data.synthetic import synthetic_records

    data = tmp_path / "no_utility.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records() if r.get("split") != "utility"))
    out = tmp_path / "unl"
    code, stdout, err = run_cli(
        ["unlearn", "--model", "tiny", "--data", data, "--method", "ga_gdr", "--steps", "1", "--quiet", "--out", out],
        capsys,
    )
    assert code == 0, err
    warnings = [line for line in (stdout + err).splitlines() if "no utility items" in line]
    assert warnings == [
        "warning: no utility items: collateral damage is measured on retain (trained-on) items only (add items with "
        '"split": "utility")'
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["utility_note"].startswith("no utility items")
    assert summary["utility_accuracy_before"] is None and summary["utility_destructive_rate"] is None
    assert summary["retain_accuracy_before"] == 1.0 and summary["retain_destructive_rate"] is not None


@pytest.mark.parametrize("method", ["rmu", "keyguard"])
def test_tiny_takes_the_presets_layers_and_a_flag_still_wins(method, tmp_path, capsys):
    """On the 2-layer tiny model RMU and keyguard take the presets' layers (their default layer 7 does not exist
    there) where the user gave none; a flag given on the command line is used as given."""
    from unpact_mech.pipeline.presets import train_overrides

    preset = train_overrides("tiny", method)["hyperparameters"]
    for extra, want in (([], preset["c"]), (["--steering-coef", "7"], 7.0)):
        out = tmp_path / f"{method}-{len(extra)}"
        code, _, err = run_cli(BASE + ["--method", method, "--steps", "1", "--out", out, *extra], capsys)
        assert code == 0, err
        hp = json.loads((out / "run.json").read_text())["lineage"][-1]["hyperparameters"]
        assert hp["layer"] == preset["layer"] and hp["c"] == want
