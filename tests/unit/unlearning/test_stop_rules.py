"""Stop rules of the unlearning loop: stop at the first step that meets the forget target, or before the step that
breaks the utility limit (that step undone, its evaluation set apart), and say why — on the tiny model."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from unpact_mech import load_model
from unpact_mech.data.record import QAItem
from unpact_mech.errors import InputError
from unpact_mech.unlearning import params as P
from unpact_mech.unlearning import unlearn


def _run(items, **options):
    model = load_model("tiny")
    result = unlearn(model, items, "ga", seed=0, progress=False, **options)
    return model, result


def test_stops_at_the_first_step_that_meets_the_forget_target(synthetic_items):
    _, full = _run(synthetic_items, lr=1e-3, steps=8, eval_every=1)
    forget = [r["forget_accuracy"] for r in full.train.dynamics]
    first = next(r["step"] for r in full.train.dynamics if r["forget_accuracy"] <= 0.5 and r["step"] > 0)
    assert 0 < first < 8, forget  # the schedule reaches the target before the last step
    model, stopped = _run(synthetic_items, lr=1e-3, steps=8, stop_when_forget_below=0.5)
    s = stopped.summary
    assert s["steps_run"] == first and s["forget_accuracy_after"] <= 0.5
    assert all(r["forget_accuracy"] > 0.5 for r in stopped.train.dynamics[:-1])  # not earlier
    assert "forget accuracy" in s["stop_reason"] and f"step {first}" in s["stop_reason"]
    assert stopped.lineage_record["steps"] == first


def test_undoes_the_step_that_breaks_the_utility_limit(synthetic_items):
    model, stopped = _run(synthetic_items, lr=1e-3, steps=8, max_utility_drop=0.2)
    s = stopped.summary
    assert s["rejected_steps"] == [s["steps_run"] + 1] and "utility accuracy fell" in s["stop_reason"]
    assert s["steps_run"] >= 1 and s["utility_accuracy_before"] - s["utility_accuracy_after"] <= 0.2
    # the kept weights are exactly those of a run trained for steps_run steps without a rule
    reference, _ = _run(synthetic_items, lr=1e-3, steps=s["steps_run"], evaluate=False)
    names = list(stopped.train.trainable)
    kept, ref = P.current(model, names), P.current(reference, names)
    assert all((kept[n] == ref[n]).all() for n in names)
    # a limit the very first step breaks: nothing is kept, and that is said, not an error
    _, none_kept = _run(synthetic_items, lr=1e-3, steps=8, max_utility_drop=0.0)
    assert none_kept.summary["steps_run"] == 0 and none_kept.summary["rejected_steps"] == [1]


def test_an_unmet_target_says_why_in_one_line(synthetic_items):
    _, result = _run(synthetic_items, lr=1e-5, steps=2, stop_when_forget_below=0.0)
    reason = result.summary["stop_reason"]
    assert result.summary["steps_run"] == 2 and "above the target 0" in reason and "--steps" in reason
    assert "\n" not in reason


def test_bad_rules_fail_before_training(synthetic_items):
    no_utility = [it for it in synthetic_items if it.split != "utility"]
    with pytest.raises(InputError, match="no utility items"):
        _run(no_utility, lr=1e-3, steps=2, max_utility_drop=0.05)
    with pytest.raises(InputError, match=r"--stop-when-forget-below must be an accuracy in \[0, 1\]"):
        _run(synthetic_items, lr=1e-3, steps=2, stop_when_forget_below=1.5)
    with pytest.raises(InputError, match="--eval-every must be 1 with a stop rule"):
        _run(synthetic_items, lr=1e-3, steps=2, stop_when_forget_below=0.5, eval_every=2)
    with pytest.raises(InputError, match=r"alpha: not a hyperparameter of ga \(it takes: none\)"):
        _run(synthetic_items, lr=1e-3, steps=2, alpha=2.0)


def test_the_cli_stop_rule_on_a_user_data_file(tmp_path, capsys):
    """A user's own JSONL (not a built-in set): the run stops on its forget target and summary.json says where."""
    facts = [
        QAItem(f"f{i}", it.question, it.answer, (), it.keywords, split)
        for i, (it, split) in enumerate(
            (it, "forget" if it.split == "forget" else "utility" if it.split == "utility" else "retain")
            for it in __import__("unpact_mech").load_items("builtin:synthetic_facts")
        )
    ]
    data = tmp_path / "my_facts.jsonl"
    data.write_text("".join(json.dumps(it.to_record()) + "\n" for it in facts))
    out = tmp_path / "unl"
    code, stdout, err = run_cli(
        ["unlearn", "--model", "tiny", "--data", data, "--method", "ga", "--lr", "1e-3", "--steps", "8",
         "--stop-when-forget-below", "0.5", "--max-utility-drop", "0.6", "--quiet", "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["forget_accuracy_after"] <= 0.5 and summary["steps_run"] < 8
    assert (
        f"stopped: forget accuracy {summary['forget_accuracy_after']:.3f} <= 0.5 at step {summary['steps_run']}"
        in stdout
    )
