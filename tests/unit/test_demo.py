"""`unpact demo` on the tiny model: every stage's outputs exist with sane values, lineage is complete, the report
renders the stages, same seed gives the same numbers, and bad input / interruption leave earlier runs intact."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from tests.cli_helpers import run_cli, tree_digest
from unpact_mech.demo import DemoConfig, run_demo
from unpact_mech.pipeline.presets import default_out

DEMO_METHODS = ("ga_gdr", "npo_gdr")


@pytest.fixture(scope="module")
def demo_run(tiny_demo):
    assert tuple(tiny_demo.headline["method"]) == DEMO_METHODS
    return tiny_demo


def test_demo_writes_every_stage(demo_run):
    out = demo_run.out
    for rel in ("run.json", "summary.json", "results.csv", "report.html", "evaluate/items.csv"):
        assert (out / rel).is_file(), rel
    for m in DEMO_METHODS:
        assert (out / "unlearned" / m / "model.safetensors").is_file()
        assert (out / "unlearned" / m / "dynamics.png").is_file()
        for name in ("occlusion", "residual", "attention"):
            assert (out / "attribution" / m / name / "comparison.csv").is_file(), (m, name)
        assert (out / "attribution" / m / "residual" / "residual_components.png").is_file()
        assert (out / "attribution" / m / "attention" / "attention_heads.png").is_file()
        assert (out / "recovery" / m / "rates.csv").is_file()
        assert (out / "battery" / m / "rates.csv").is_file() and (out / "battery" / m / "details").is_dir()
    assert not list(out.parent.glob("*.tmp-*"))


def test_demo_numbers_are_sane(demo_run):
    summary = json.loads((demo_run.out / "summary.json").read_text())
    rows = summary["methods"]
    assert [r["method"] for r in rows] == list(DEMO_METHODS)
    for r in rows:
        for key in (
            "forget_acc_before",
            "forget_acc_after",
            "retain_acc_before",
            "retain_acc_after",
            "utility_acc_before",
            "utility_acc_after",
            "utility_destructive_rate",
            "retain_destructive_rate",
            "best_prompt_recovery",
            "best_activation_recovery",
        ):
            assert 0.0 <= r[key] <= 1.0, (key, r[key])
        assert r["forget_acc_after"] < r["forget_acc_before"]  # the unlearning did something
        assert r["eligible"] >= 1
        assert r["best_prompt_of"] == 3 and r["best_activation_of"] == 2  # best of K, neutral excluded
        assert r["keytoken_contribution_before"] > r["other_contribution_before"]  # KeyTokens are the top words
        # the battery's worst case: the highest recovery rate of its non-control conditions, named, with K
        battery = pd.read_csv(demo_run.out / "battery" / r["method"] / "rates.csv")
        attacks = battery[~battery["is_control"].astype(bool)]
        assert r["battery_of"] == len(attacks) == 8
        assert r["battery_worst_recovery"] == pytest.approx(attacks["recovery_rate"].max())
        assert r["battery_worst"] in set(attacks.loc[attacks["recovery_rate"] == attacks["recovery_rate"].max(),
                                                     "condition"])  # fmt: skip
        assert r["battery_worst_ci_low"] <= r["battery_worst_recovery"] <= r["battery_worst_ci_high"]
    for m in DEMO_METHODS:
        rates = pd.read_csv(demo_run.out / "recovery" / m / "rates.csv")
        assert set(rates["condition"]) >= {"focus", "repeat_question", "quote", "neutral"}
        assert len(rates) == 6
        assert rates["recovery_rate"].between(0, 1).all()
        assert (rates["ci_low"] <= rates["recovery_rate"]).all()
        assert (rates["recovery_rate"] <= rates["ci_high"]).all()
    results = pd.read_csv(demo_run.out / "results.csv")
    assert {"item_id", "split", "metric", "value", "method"} <= set(results.columns) and len(results)
    evaluation = json.loads((demo_run.out / "evaluate" / "summary.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(1.0)  # the tiny model knows its facts


def test_demo_lineage_is_complete(demo_run):
    for m in DEMO_METHODS:
        lineage = json.loads((demo_run.out / "recovery" / m / "run.json").read_text())["lineage"]
        assert [step["role"] for step in lineage] == ["base", "unlearned", "recovered"]
        assert lineage[1]["method"] == m and lineage[2]["weights_changed"] is False
        model_lineage = json.loads((demo_run.out / "unlearned" / m / "run.json").read_text())["lineage"]
        assert [step["role"] for step in model_lineage] == ["base", "unlearned"]
    top = json.loads((demo_run.out / "run.json").read_text())
    assert top["command"] == "demo" and set(top["config"]["lineages"]) == set(DEMO_METHODS)


def test_report_shows_every_stage_and_rebuilds(demo_run, capsys):
    html = (demo_run.out / "report.html").read_text()
    for text in (
        "Headline",
        "Lineage",
        "evaluate: evaluate",
        "unlearn: unlearned/ga_gdr",
        "recover: recovery/npo_gdr",
        "attribute: attribution/ga_gdr/occlusion",
        "KeyToken shift",
        "data:image/png;base64,",
        "Is it really gone?",
        "recover: battery/ga_gdr",
    ):
        assert text in html, text
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained, no network
    assert (demo_run.out / "is_it_gone.png").read_bytes()[:4] == b"\x89PNG"
    os.remove(demo_run.out / "report.html")
    code, out, _ = run_cli(["report", demo_run.out], capsys)
    assert code == 0 and (demo_run.out / "report.html").read_text().count("<section") == html.count("<section")


def test_same_seed_same_numbers(demo_run, tmp_path):
    again = run_demo(
        DemoConfig(model="tiny", methods=DEMO_METHODS),
        tmp_path / "again",
        progress=False,
        log=lambda _: None,
    )
    first, second = (json.loads((r / "summary.json").read_text())["methods"] for r in (demo_run.out, again.out))
    assert first == second
    rates = [pd.read_csv(r / "recovery" / "npo_gdr" / "rates.csv") for r in (demo_run.out, again.out)]
    pd.testing.assert_frame_equal(*rates)


def test_default_out_never_reuses_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = default_out("tiny")
    first.mkdir(parents=True)
    second = default_out("tiny")
    assert second != first and second.parent == first.parent and second.name.startswith(first.name)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--methods", "ga", "forget_harder"], "--methods: unknown unlearning method 'forget_harder'"),
        (["--methods", "ga", "ga"], "--methods: a method is listed twice"),
        (["--strategies", "shout"], "unknown prompt strategy 'shout'"),
        (["--steps", "0"], "--steps must be an integer >= 1"),
        (["--battery", "teleport"], "unknown attack 'teleport'"),
        (["--battery", "few_shot:shots=-2"], "shots must be an integer >= 0"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["demo", "--model", "tiny", "--out", tmp_path / "run", *argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_or_an_earlier_run(tmp_path, capsys, demo_run):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, _, err = run_cli(["demo", "--model", "tiny", "--out", target], capsys)
    assert code == 2 and "already exists (a file)" in err and target.read_text() == "mine"
    before = tree_digest(demo_run.out)
    code, _, err = run_cli(["demo", "--model", "tiny", "--out", demo_run.out], capsys)
    assert code == 2 and "already exists" in err
    assert tree_digest(demo_run.out) == before


def test_interrupted_demo_leaves_earlier_results_and_no_partial_run(tmp_path, capsys, monkeypatch, demo_run):
    from unpact_mech.pipeline.session import Session

    before = tree_digest(demo_run.out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "recover", interrupted)
    code, _, err = run_cli(["demo", "--model", "tiny", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 130 and "interrupted" in err
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []
    assert tree_digest(demo_run.out) == before


def test_rerun_after_a_killed_demo_names_the_leftovers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / "unpact-runs" / "demo-tiny-20260101-000000.tmp-abcd"  # what SIGKILL leaves behind
    stale.mkdir(parents=True)
    code, out, err = run_cli(
        [
            "demo",
            "--model",
            "tiny",
            "--quiet",
            "--methods",
            "ga",
            "--strategies",
            "focus",
            "--interventions",
            "patch",
            "--layer-items",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert "interrupted earlier demo" in out and str(stale.name) in out
    runs = [p for p in (tmp_path / "unpact-runs").iterdir() if ".tmp-" not in p.name]
    assert len(runs) == 1 and (runs[0] / "report.html").is_file()
    assert f"open unpact-runs/{runs[0].name}/report.html" in out
