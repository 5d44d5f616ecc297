"""``unpact recover`` end to end on the tiny model, and its bad-input contract."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from tests.cli_helpers import run_cli

BASE = [
    "recover",
    "--original",
    "tiny",
    "--data",
    "builtin:synthetic_facts",
    "--keywords",
    "data",
    "--quiet",
]


def test_recover_end_to_end(ga_unlearned_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    code, stdout, err = run_cli(
        BASE
        + [
            "--unlearned",
            ga_unlearned_dir,
            "--out",
            out,
            "--strategy",
            "focus",
            "quote",
            "--intervention",
            "patch",
            "pasta:other_weight=0.05",
            "--ablation",
        ],
        capsys,
    )
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {
        "run.json",
        "results.csv",
        "summary.json",
        "rates.csv",
        "per_item.csv",
        "keywords.csv",
        "recovery_rates.png",
        "ablation.csv",
        "ablation.png",
    } <= names
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["recovery_rate"]) == {"focus", "quote", "patch[0,1]", "pasta[0]x0.05"}
    assert all(0 <= v <= 1 for v in summary["recovery_rate"].values())
    assert 0 <= summary["utility_destructive_rate"] <= 1 and summary["n_eligible"] > 0
    rates = pd.read_csv(out / "rates.csv")
    assert {"ci_low", "ci_high", "p_vs_random", "p_vs_random_holm", "p_vs_neutral"} <= set(rates.columns)
    assert (rates["ci_low"] <= rates["recovery_rate"]).all() and (rates["recovery_rate"] <= rates["ci_high"]).all()
    assert "recovery" in stdout and "p " in stdout and "nan" not in stdout
    lineage = json.loads((out / "run.json").read_text())["lineage"]
    assert [step["role"] for step in lineage] == ["base", "unlearned", "recovered"] and lineage[-1][
        "weights_changed"
    ] is False
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:4]) == ["item_id", "split", "metric", "value"] and {
        "condition",
        "emphasis",
        "model",
    } <= set(results.columns)
    sweep = pd.read_csv(out / "ablation.csv")
    assert len(sweep) == 2 * 4 * 2 * 2 and sweep.recovery_rate.between(0, 1).all()
    assert set(sweep.intervention) == {"patch", "pasta"}  # the sweep honours the interventions asked for
    assert sweep[sweep.intervention == "pasta"]["layers"].str.endswith("x0.05").all()  # and their options
    assert (out / "recovery_rates.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def other_tokenizer_dir(tmp_path):
    """The tiny model with two vocabulary ids swapped: same architecture, different tokenizer."""
    from unpact_mech.models.loading import resolve_spec

    d = tmp_path / "retok"
    shutil.copytree(resolve_spec("tiny").path, d)
    tj = json.loads((d / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = [k for k in vocab if k.isalpha() and len(k) > 3][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    return d


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "shout"], "unknown prompt strategy 'shout'"),
        (["--intervention", "teleport"], "unknown intervention 'teleport'"),
        (["--intervention", "scale:layers=7"], r"layer 7 out of range \(model has layers 0..1\)"),
        (["--intervention", "scale:factor=0"], "factor must be > 0"),
        (["--intervention", "pasta:other_weight=-0.5"], "other_weight must be > 0"),
        (["--intervention", "pasta:factor=0.5"], "unknown option 'factor'"),
        (["--keytoken-alpha", "0"], r"--keytoken-alpha must be in \(0, 1\]"),
        (["--ablation", "--ablation-layers", "0-9"], "--ablation-layers: layer 2 out of range"),
        (["--attack", "teleport"], "unknown attack 'teleport'"),
        (["--attack", "few_shot:shots=-1"], "shots must be an integer >= 0, got -1"),
        (["--attack", "relearn_unrelated:steps=-1"], "steps must be an integer >= 0, got -1"),
        (["--attack", "quantize:scheme=int3"], "unknown scheme 'int3'"),
        (["--attack", "quantize"], "no GGUF source file"),
        (["--attack", "logit_lens:layers=5"], r"layer 5 out of range"),
        (["--attack", "ablate_direction:layers=0-3"], r"layer 2 out of range"),
        (["--attack", "rephrase:style=yodish"], "unknown style 'yodish'"),
        (["ARCH"], "different architectures"),
        (["TOKENIZER"], "different tokenizers"),
    ],
)
def test_recover_bad_input(extra, message, ga_unlearned_dir, llama_dir, other_tokenizer_dir, tmp_path, capsys):
    unlearned = ga_unlearned_dir
    if extra == ["ARCH"]:
        unlearned, extra = llama_dir, []
    elif extra == ["TOKENIZER"]:
        unlearned, extra = other_tokenizer_dir, []
    out = tmp_path / "out"
    code, _, err = run_cli(BASE + ["--unlearned", unlearned, "--out", out] + extra, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


def _plan_numbers(err: str) -> dict[str, int]:
    """The numbers of the plan line ``plan: C conditions x E eligible forget items (of F), ...: V evaluations, A
    answers`` on stderr."""
    m = re.search(
        r"^plan: (\d+) conditions x (\d+) eligible forget items \(of (\d+)\), (with|no) controls: (\d+) evaluations, "
        r"(\d+) answers",
        err,
        re.M,
    )
    assert m, err
    keys = ("conditions", "eligible", "forget", "controls", "evaluations", "answers")
    return {k: (v == "with" if k == "controls" else int(v)) for k, v in zip(keys, m.groups())}


def test_recover_prints_its_plan_and_the_counts_match_the_run(ga_unlearned_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    argv = [a for a in BASE if a != "--quiet"]
    code, stdout, err = run_cli(
        argv + ["--unlearned", ga_unlearned_dir, "--out", out, "--strategy", "focus", "neutral",
                "--intervention", "patch", "scale:layers=1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "\r" not in err  # no progress-bar frames when stderr is not a terminal
    plan = _plan_numbers(err)
    per_item = pd.read_csv(out / "per_item.csv")
    conditions = per_item[per_item.kind != "baseline"]
    summary = json.loads((out / "summary.json").read_text())
    assert plan["conditions"] == len(pd.read_csv(out / "rates.csv")) == 4 and plan["controls"]
    assert plan["eligible"] == summary["n_eligible"] and plan["forget"] == summary["n_forget"]
    assert plan["answers"] == len(conditions)
    # one evaluation per arm: emphasis, forget_rest, random control, original control, general control
    assert plan["evaluations"] == len(conditions.groupby(["condition", "arm"]))
    assert set(conditions.arm) <= {"emphasis", "forget_rest", "random_control", "original_control", "general_control"}
    estimate = re.search(
        r"^estimate: about \d+(\.\d)? (s|min|h) for the conditions \(from the baselines: (\d+) answers", err, re.M
    )
    assert estimate and int(estimate.group(3)) == len(per_item[per_item.kind == "baseline"])
    assert len([line for line in err.splitlines() if line.startswith(("plan:", "estimate:"))]) == 2
    # the summary reports forget, retain and utility accuracy apart, as summary.json has them
    split_line = next(line for line in stdout.splitlines() if line.startswith("accuracy original -> unlearned:"))
    for split in ("forget", "retain", "utility"):
        o, u = summary[f"original_{split}_accuracy"], summary[f"unlearned_{split}_accuracy"]
        assert f"{split} {o:.2f} -> {u:.2f}" in split_line

    # --no-controls: fewer evaluations, and the plan says so; --quiet: no plan at all
    code, _, err = run_cli(
        argv + ["--unlearned", ga_unlearned_dir, "--out", tmp_path / "bare", "--strategy", "focus",
                "--intervention", "none", "--no-controls"],
        capsys,
    )  # fmt: skip
    bare = _plan_numbers(err)
    assert code == 0 and not bare["controls"] and bare["evaluations"] == 2 and bare["answers"] == bare["forget"]
    code, _, err = run_cli(BASE + ["--unlearned", ga_unlearned_dir, "--out", tmp_path / "quiet", "--strategy",
                                   "focus", "--intervention", "none", "--no-controls"], capsys)  # fmt: skip
    assert code == 0 and "plan:" not in err and "estimate:" not in err


@pytest.fixture(scope="module")
def occlusion_run(tmp_path_factory):
    """``unpact attribute`` word-level occlusion of the bare answer on the ORIGINAL tiny model (its default target
    is the bare answer: plain prompt format)."""
    from unpact_mech.cli import main

    out = tmp_path_factory.mktemp("attr") / "occ"
    argv = ["attribute", "--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "occlusion", "--level",
            "word", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def test_keywords_from_an_attribute_run_equal_the_recomputed_ones(
    occlusion_run, original, synthetic_items, ga_unlearned_dir, tmp_path, capsys
):
    from unpact_mech.attacks.keywords import keytoken_keywords, keywords_from_run
    from unpact_mech.scoring.tokens import encode_item

    encoded = [encode_item(original, it) for it in synthetic_items]
    for alpha, beta in ((0.5, 3), (0.2, 1), (0.9, 2)):
        computed = keytoken_keywords(original, synthetic_items, encoded, keytoken_alpha=alpha, keytoken_beta=beta)
        read = keywords_from_run(occlusion_run, original, synthetic_items, encoded, keytoken_alpha=alpha,
                                 keytoken_beta=beta)  # fmt: skip
        assert read == computed
    assert len({k.words for k in computed}) > 1  # not a trivial selection

    # through the command: keywords.csv holds the run's KeyTokens, and the occlusion is not run again
    out = tmp_path / "rec"
    argv = [a for a in BASE if a not in ("--keywords", "data", "--quiet")]
    code, _, err = run_cli(
        argv + ["--unlearned", ga_unlearned_dir, "--out", out, "--keywords-from", occlusion_run, "--strategy", "focus",
                "--intervention", "none", "--no-controls"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "occlusion" not in next(line for line in err.splitlines() if line.startswith("plan:"))
    table = pd.read_csv(out / "keywords.csv", keep_default_na=False).set_index("item_id")
    default = keytoken_keywords(original, synthetic_items, encoded)
    assert [table.loc[k.item_id, "keywords"] for k in default] == [" | ".join(k.words) for k in default]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["keywords_from"] == str(occlusion_run) and summary["keyword_source"] == "attribution"


@pytest.fixture(scope="module")
def other_runs(tmp_path_factory, ga_unlearned_dir, synthetic_items):
    """Runs that cannot give the keywords: another level, target, method, model, data; and an evaluate run."""
    from unpact_mech.cli import main

    root = tmp_path_factory.mktemp("others")
    data = root / "part.jsonl"
    data.write_text("".join(json.dumps(it.to_record()) + "\n" for it in synthetic_items[:-1]))
    common = ["--data", "builtin:synthetic_facts", "--quiet"]
    runs = {
        "token": ["attribute", "--model", "tiny", *common, "--method", "occlusion", "--level", "token"],
        "first_logit": ["attribute", "--model", "tiny", *common, "--method", "occlusion", "--level", "word",
                        "--target", "first_logit"],
        "grad": ["attribute", "--model", "tiny", *common, "--method", "grad_x_input", "--level", "word"],
        "unlearned": ["attribute", "--model", str(ga_unlearned_dir), *common, "--method", "occlusion", "--level",
                      "word"],
        "part": ["attribute", "--model", "tiny", "--data", str(data), "--quiet", "--method", "occlusion", "--level",
                 "word"],
        "evaluate": ["evaluate", "--model", "tiny", *common],
    }  # fmt: skip
    for name, argv in runs.items():
        assert main([*argv, "--out", str(root / name)]) == 0, name
    return root


@pytest.mark.parametrize(
    "run, message",
    [
        ("token", ": occlusion at token level of target answer; the keywords need word-level occlusion"),
        ("first_logit", "of target first_logit; the keywords need word-level occlusion of the bare answer"),
        ("grad", ": grad_x_input at word level of target answer;"),
        ("unlearned", "attributed another model than the original tiny"),
        ("part", r"the run lacks item 'syn-\S+'"),
        ("evaluate", "an `unpact evaluate` run, not an `unpact attribute` run"),
        ("missing", r"not a run directory \(no run.json\)"),
        ("DATA", "--keywords-from gives the attribution keywords"),
    ],
)
def test_keywords_from_refuses_a_run_that_cannot_give_them(run, message, other_runs, ga_unlearned_dir, tmp_path,
                                                           capsys):  # fmt: skip
    out = tmp_path / "out"
    argv = [a for a in BASE if a not in ("--keywords", "data")]
    source = other_runs / ("token" if run == "DATA" else run)
    extra = ["--keywords", "data"] if run == "DATA" else []
    code, _, err = run_cli(
        argv + ["--unlearned", ga_unlearned_dir, "--out", out, "--keywords-from", source, *extra], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err
    assert lines[0].startswith("unpact: error: --keywords-from") or run == "DATA"
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


def test_recover_attack_all_runs_the_battery_with_its_details(ga_unlearned_dir, tmp_path, capsys):
    """``--attack all``: every condition of the battery for the model, in order, each with its family and the
    original-model control; the detail tables and the worst case per family come with it."""
    from unpact_mech.attacks import ATTACKS, resolve_attacks
    from unpact_mech.attacks.battery import battery_specs
    from unpact_mech.models import load_model

    out = tmp_path / "all"
    code, stdout, err = run_cli(BASE + ["--unlearned", ga_unlearned_dir, "--out", out, "--attack", "all"], capsys)
    assert code == 0, err
    rates = pd.read_csv(out / "rates.csv")
    tiny = load_model(ga_unlearned_dir)
    expected = [a.label for a in resolve_attacks(battery_specs(tiny), tiny)]
    assert list(rates["condition"]) == expected and len(expected) > len(set(rates["family"])) > 10
    assert {ATTACKS[c.split("[")[0]].family for c in rates["condition"]} == set(rates["family"])
    battery = rates[rates["kind"].isin(["transform", "readout"])]
    assert battery["original_accuracy_after"].notna().all()  # the same attack on the original, beside it
    assert rates["gap_fraction"].notna().all() and rates["forget_accuracy_after"].between(0, 1).all()
    details = {p.name for p in (out / "details").iterdir()}
    assert {"logit_lens.per_layer.csv", "logit_lens.depth_curve.csv", "quantize[q4_1].grid.csv",
            "relearn_split[k5].fictional_control.csv", "relearn_unrelated[k1].training.csv"} <= details  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    worst = summary["worst_case_by_family"]
    assert set(worst) == set(rates[~rates["is_control"]]["family"])
    assert "worst case per family" in stdout and all(w["of"] >= 1 for w in worst.values())
    # 'battery': the same conditions without the keyword-emphasis ones, in the same order
    from unpact_mech.attacks import DEFAULT_ATTACKS
    from unpact_mech.attacks.battery import expand_specs

    beyond = expand_specs(["battery"], tiny)
    assert beyond == [s for s in battery_specs(tiny) if s not in DEFAULT_ATTACKS] and len(beyond) == 19
    # 'emphasis': the keyword-emphasis conditions alone; 'emphasis' + 'battery' is 'all' (same order)
    assert expand_specs(["emphasis"], tiny) == list(DEFAULT_ATTACKS)
    assert expand_specs(["emphasis", "battery"], tiny) == battery_specs(tiny) == expand_specs(["all"], tiny)
    # without --attack, only the keyword-emphasis conditions run (the default list is unchanged)
    code, _, err = run_cli(BASE + ["--unlearned", ga_unlearned_dir, "--out", tmp_path / "d", "--strategy", "focus",
                                   "--intervention", "none"], capsys)  # fmt: skip
    assert code == 0 and list(pd.read_csv(tmp_path / "d" / "rates.csv")["condition"]) == ["focus"], err
