"""The experiment scripts (experiments/*.py) on the tiny model: every script writes the output contract with sane
values and complete lineage; one script trains its own unlearned model (same numbers as the demo's); bad input exits
2 with one line on stderr and writes nothing.

The scripts run in-process through ``unpact_mech.pipeline.study.main`` (one interpreter: seconds each) on ONE shared
tiny demo run
(``--from-run``); one test runs a script as a real subprocess for the exit code.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.unit.recovery.test_compare import per_item

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SCRIPTS = (
    "finding1_keyword_focus",
    "finding2_keyword_recovery",
    "finding3_destruction",
    "layer_study",
    "patching_recovery_ablation",
    "keytoken_sweep",
)
DEMO_METHODS = ("ga_gdr", "npo_gdr")
COMMON = ("--model", "tiny", "--n-boot", "200", "--quiet")


def load(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def run_script(name: str, *argv) -> int:
    from unpact_mech.pipeline.study import main

    return main(load(name).STUDY, [str(a) for a in argv])


@pytest.fixture(scope="module")
def demo(tiny_demo) -> Path:
    return tiny_demo.out


@pytest.fixture(scope="module")
def run_dir(demo, tmp_path_factory):
    """``run_dir(name)``: the run directory of script ``name`` on the demo's models (each script runs once)."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name) / "run"
            assert run_script(name, *COMMON, "--from-run", demo, "--out", out) == 0
            done[name] = out
        return done[name]

    return get


def table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "table.csv")


def assert_ci(df: pd.DataFrame, col: str) -> None:
    sub = df.dropna(subset=[col])
    assert len(sub), col
    assert sub[col].between(0, 1).all() if "rate" in col else True
    low, high = ("ci_low", "ci_high") if col == "recovery_rate" else (f"{col}_ci_low", f"{col}_ci_high")
    assert (sub[low] <= sub[col] + 1e-12).all() and (sub[col] <= sub[high] + 1e-12).all(), col


@pytest.mark.parametrize("name", SCRIPTS)
def test_output_contract(name, run_dir, capsys):
    out = run_dir(name)
    for rel in ("run.json", "results.csv", "summary.json", "table.csv"):
        assert (out / rel).is_file(), rel
    assert 1 <= len(list(out.glob("*.png"))) <= 3
    assert not list(out.parent.glob("*.tmp-*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"] and len(summary["table"]) == len(table(out))
    results = pd.read_csv(out / "results.csv")
    assert len(results) and list(results.columns[:4]) == ["item_id", "split", "metric", "value"]
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == f"experiment:{name}" and run["seed"] == 0
    used = DEMO_METHODS[:1] if name == "keytoken_sweep" else DEMO_METHODS
    assert [(s["role"], s.get("method")) for s in run["lineage"]] == [("base", None)] + [("unlearned", m) for m in used]
    for m in used:
        lineage = run["config"]["lineages"][m]
        assert [s["role"] for s in lineage] == ["base", "unlearned"] and lineage[1]["method"] == m
        assert run["inputs"][f"unlearned/{m}"]["sha256"]


def test_finding1_keytokens_lose_focus(run_dir):
    out = run_dir("finding1_keyword_focus")
    df, summary = table(out), json.loads((out / "summary.json").read_text())
    assert list(df["method"]) == list(DEMO_METHODS)
    assert_ci(df, "diff_change")
    for row in df.to_dict("records"):
        by_split = summary["keytoken_change_forget"][row["method"]]
        for group in ("keytokens", "other"):
            for when in ("before", "after", "change"):
                assert row[f"{group}_{when}"] == pytest.approx(by_split[group][when])
        assert row["keytokens_before"] > row["other_before"]
        assert row["n_paired"] == row["n_items"] == 8


def test_finding2_recovery_rates(run_dir):
    from unpact_mech.attacks import DEFAULT_ATTACKS, attack_names

    out = run_dir("finding2_keyword_recovery")
    df = table(out)
    assert len(df) == len(DEMO_METHODS) * len(DEFAULT_ATTACKS) == len(DEMO_METHODS) * 11
    assert_ci(df, "recovery_rate")
    for col in (
        "random_control_rate",
        "original_accuracy_before",
        "original_accuracy_after",
        "utility_accuracy_before",
        "utility_accuracy_after",
        "top1_before",
        "top1_after",
    ):
        assert df[col].dropna().between(0, 1).all(), col
    assert (df["n_eligible"] >= 1).all()
    for m in DEMO_METHODS:
        rates = pd.read_csv(out / "recovery" / m / "rates.csv")
        assert [c for c in DEFAULT_ATTACKS if c in attack_names("strategy")] == list(rates["condition"][:7])
        lineage = json.loads((out / "recovery" / m / "run.json").read_text())["lineage"]
        assert [s["role"] for s in lineage] == ["base", "unlearned", "recovered"]


def test_finding3_destruction(run_dir):
    out = run_dir("finding3_destruction")
    df, summary = table(out), json.loads((out / "summary.json").read_text())
    # the held-out utility items first, the retain (trained-on) items beside them, per method
    assert [(r["method"], r["split"]) for r in df.to_dict("records")] == [
        (m, s) for m in DEMO_METHODS for s in ("utility", "retain")
    ]
    assert_ci(df, "destructive_rate")
    assert_ci(df, "diff_change")
    assert (df["n_paired"] > 0).all() and (df["n_items"] == 12).all()
    assert summary["function_words"] == list(load("finding3_destruction").FUNCTION_WORDS)
    assert set(summary["function_word_change"]["ga_gdr/utility"]) <= set(summary["function_words"])


def test_finding3_word_classes():
    word_class = load("finding3_destruction").word_class
    assert [word_class(w) for w in ("What", " THE", "capital", "Zorblat", "?", "1999")] == [
        "function",
        "function",
        "content",
        "content",
        None,
        "content",
    ]


def test_layer_study(run_dir):
    df = table(run_dir("layer_study"))
    assert [(r["method"], r["split"]) for r in df.to_dict("records")] == [
        (m, s) for m in DEMO_METHODS for s in ("forget", "retain")
    ]
    for when in ("before", "after"):
        assert df[f"first_top1_layer_{when}"].between(0, 2).all()  # tiny: 2 layers; "never" counts as 2
        assert df[f"reaches_top1_{when}"].between(0, 1).all()
    assert df["top_component"].str.fullmatch(r"L\d+\.(attn|mlp)").all()
    assert df["top_head"].str.fullmatch(r"L\d+H\d+").all()
    assert (df["top_components"].str.count(",") <= 4).all()


def test_patching_ablation(run_dir, tmp_path, demo):
    out = run_dir("patching_recovery_ablation")
    df, sweep = table(out), pd.read_csv(out / "sweep.csv")
    assert len(df) == len(DEMO_METHODS) * 2 * 4 * 1  # methods x {patch, scale} x groups x default mode (cumulative)
    assert set(df["group"]) == {"keywords", "non_keywords", "random_non_keywords", "last_token"}
    assert set(df["mode"]) == {"cumulative"}
    both = tmp_path / "both"
    assert (
        run_script(
            "patching_recovery_ablation", *COMMON, "--from-run", demo, "--out", both, "--modes", "single", "cumulative"
        )
        == 0
    )
    assert len(table(both)) == len(DEMO_METHODS) * 2 * 4 * 2
    for col in ("best_recovery_rate", "mean_recovery_rate", "last_layer_recovery_rate"):
        assert df[col].between(0, 1).all(), col
    assert (df["mean_recovery_rate"] <= df["best_recovery_rate"] + 1e-12).all()
    assert set(sweep["group"]) == {"keywords", "non_keywords", "random_non_keywords", "last_token"} and set(
        sweep["layer"]
    ) == {0, 1}


def test_keytoken_sweep_grid(run_dir):
    mod = load("keytoken_sweep")
    out = run_dir("keytoken_sweep")
    df, summary = table(out), json.loads((out / "summary.json").read_text())
    assert len(df) == 20 and set(zip(df["keytoken_alpha"], df["keytoken_beta"])) == {
        (a, b) for a in mod.ALPHAS for b in mod.BETAS
    }
    for col in ("top_word_hit_rate", "keytoken_hit_rate", "keyword_precision", "keyword_recall"):
        assert df[col].between(0, 1).all(), col
    assert (df["mean_keytokens_per_item"] >= 1).all()
    assert (
        df.groupby("keytoken_beta")["mean_keytokens_per_item"].apply(lambda s: s.is_monotonic_decreasing).all()
    )  # higher α, fewer
    rec = df.dropna(subset=["recovery_rate"])
    assert set(zip(rec["keytoken_alpha"], rec["keytoken_beta"])) == set(mod.RECOVERY_SETTINGS)
    assert_ci(rec, "recovery_rate")
    assert (rec["recovery_method"] == DEMO_METHODS[0]).all()
    assert 0 <= summary["data_keywords_recovery"]["recovery_rate"] <= 1


def test_trains_without_from_run(run_dir, tmp_path, monkeypatch, capsys):
    """No --from-run: unlearns a fresh copy (written with its lineage) into the default out dir; same seed and recipe
    as the demo, so the same numbers as on the demo's model."""
    monkeypatch.chdir(tmp_path)
    assert run_script("finding3_destruction", *COMMON, "--methods", "ga_gdr") == 0
    (out,) = (tmp_path / "unpact-runs").glob("finding3_destruction-tiny-*")
    assert f"output: {out.relative_to(tmp_path)}" in capsys.readouterr().out
    lineage = json.loads((out / "unlearned" / "ga_gdr" / "unpact_model.json").read_text())["lineage"]
    assert [s["role"] for s in lineage] == ["base", "unlearned"]
    run = json.loads((out / "run.json").read_text())
    assert [(s["role"], s.get("method")) for s in run["lineage"]] == [("base", None), ("unlearned", "ga_gdr")]
    mine, shared = table(out).iloc[0], table(run_dir("finding3_destruction")).iloc[0]
    for col in ("destructive_rate", "function_change", "content_change", "diff_change"):
        assert math.isclose(mine[col], shared[col], rel_tol=1e-5, abs_tol=1e-6), col


@pytest.mark.parametrize("case", ["unknown_method", "from_run_missing", "out_is_file", "out_exists"])
def test_bad_input_exits_2_and_writes_nothing(case, demo, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*COMMON, "--from-run", demo, "--out", out]
    if case == "unknown_method":
        argv += ["--methods", "ga_gdr", "nope"]
    elif case == "from_run_missing":
        argv += ["--methods", "ga_gdr", "rmu"]
    elif case == "out_is_file":
        out.write_text("keep me")
    else:
        (out / "x").mkdir(parents=True)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert run_script("finding1_keyword_focus", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("finding1_keyword_focus.py: error:"), err
    assert {
        "unknown_method": "'nope'",
        "from_run_missing": "unlearned/rmu",
        "out_is_file": "a file",
        "out_exists": "already exists",
    }[case] in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if case == "out_is_file":
        assert out.read_text() == "keep me"


def test_cli_exit_code_and_help(tmp_path):
    from unpact_mech.pipeline.study import build_parser

    script = EXPERIMENTS / "keytoken_sweep.py"
    proc = subprocess.run(
        [sys.executable, script, "--model", "tiny", "--methods", "nope", "--out", tmp_path / "o"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr
    assert not (tmp_path / "o").exists()
    for name in SCRIPTS:
        help_text = build_parser(load(name).STUDY).format_help()
        assert "--from-run" in help_text and load(name).__doc__.splitlines()[0] in help_text


def test_the_readme_example_study_runs(demo, tmp_path):
    """The one-file study of experiments/README.md, saved as a script, runs on the demo's models."""
    import re

    code = re.search(r"```python\n(.*?)```", (EXPERIMENTS / "README.md").read_text(), re.S).group(1)
    script = tmp_path / "my_study.py"
    script.write_text(code)
    namespace = {"__name__": "my_study"}
    exec(compile(code, str(script), "exec"), namespace)
    from unpact_mech.pipeline.study import Study, main

    out = tmp_path / "run"
    study = Study("forget_accuracy", namespace["run"].__doc__, namespace["run"])
    assert main(study, ["--model", "tiny", "--from-run", str(demo), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "table.csv")
    assert list(table["method"]) == list(DEMO_METHODS)
    demo_summary = json.loads((demo / "summary.json").read_text())
    assert list(table["forget_accuracy"]) == [r["forget_acc_after"] for r in demo_summary["methods"]]


def test_the_recipe_table_script_reports_utility_apart(tmp_path):
    """experiments/tuning/unlearning_recipes.py (the docs' recipe table) on tiny: one row per run with forget, utility
    (held out) and retain (trained on) accuracy, and the utility destructive rate inside its exact interval."""
    import importlib.util

    path = EXPERIMENTS / "tuning" / "unlearning_recipes.py"
    spec = importlib.util.spec_from_file_location("unlearning_recipes", path)
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    code = recipes.main(
        ["--model", "tiny", "--run", "ga_gdr:lr=5e-4:steps=6", "ga:lr=1e-6:steps=1", "--threads", "1",
         "--out", str(tmp_path / "rec")]
    )  # fmt: skip
    assert code == 0
    table = pd.read_csv(tmp_path / "rec" / "recipes.csv").set_index("run")
    assert list(table.index) == ["ga_gdr:lr=5e-4:steps=6", "ga:lr=1e-6:steps=1"]
    strong, weak = table.iloc[0], table.iloc[1]
    assert strong.forget_after < strong.forget_before == 1.0  # the demo recipe forgets on tiny
    assert weak.forget_after == weak.forget_before  # one step at lr 1e-6 changes no answer
    for r in (strong, weak):
        assert r.utility_before == 1.0  # tiny knows every utility fact: the destructive rate is 1 - accuracy after
        assert r.utility_destructive_rate == pytest.approx(1.0 - r.utility_after)
        assert r.utility_destructive_ci_low <= r.utility_destructive_rate <= r.utility_destructive_ci_high


def test_the_keyguard_tuning_trail_attacks_tuning_items_only(tmp_path, capsys):
    """experiments/tuning/keyguard_tuning.py on tiny: one row per configuration (appended to --out), the recovery
    conditions counted on the TUNING forget items only (never more eligible items than tuning items), grid snapping
    as a config key; a config without '=' exits 2 with one line before any training."""
    import importlib.util

    from unpact_mech.data import FORGET, load_items, split_items
    from unpact_mech.data.splits import tuning_split

    path = EXPERIMENTS / "tuning" / "keyguard_tuning.py"
    spec = importlib.util.spec_from_file_location("keyguard_tuning", path)
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)
    out = tmp_path / "trail.csv"
    argv = ["--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "keyguard_grid", "--attacks", "focus",
            "quantize:scheme=q4_1", "--out", str(out)]  # fmt: skip
    assert tuning.main([*argv, "--config", "steps=2,grid_snap=0"]) == 0
    assert tuning.main([*argv, "--config", "steps=2,grid_snap=0.05"]) == 0
    table = pd.read_csv(out)
    assert list(table["config"]) == ["steps=2,grid_snap=0", "steps=2,grid_snap=0.05"]
    forget = [it.id for it in split_items(load_items("builtin:synthetic_facts"), FORGET)]
    assert (table["n_eligible_tuning"] <= len(tuning_split(forget)[0])).all()
    assert {"R:focus", "R:quantize[q4_1]"} <= set(table.columns) and table["utility"].between(0, 1).all()
    capsys.readouterr()
    assert tuning.main([*argv, "--config", "steps"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key=value" in err
    assert len(pd.read_csv(out)) == 2


def test_the_grid_snap_probe_on_tiny(tmp_path, capsys):
    """experiments/tuning/grid_snap_probe.py on a tiny keyguard model: one row per fraction with accuracies in [0, 1]
    and more weights off the base at ρ = 1 than at ρ = 0.05; a fraction above 1 and a directory without a model exit
    2 with one line."""
    import importlib.util

    from tests.cli_helpers import run_cli

    unlearned = tmp_path / "kg"
    code, _, err = run_cli(["unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "keyguard",
                            "--steps", "2", "--out", str(unlearned), "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    path = EXPERIMENTS / "tuning" / "grid_snap_probe.py"
    spec = importlib.util.spec_from_file_location("grid_snap_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    argv = ["--unlearned", str(unlearned), "--model", "tiny", "--data", "builtin:synthetic_facts", "--scheme", "q4_1"]
    out = tmp_path / "probe.csv"
    assert probe.main([*argv, "--fractions", "0.05", "1", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table["fraction"]) == [0.05, 1.0]
    cols = ["forget", "forget_tuning", "utility", "requantized_forget", "requantized_forget_held_out"]
    assert table[cols].stack().between(0, 1).all()
    assert table["off_base_share"].iloc[1] > table["off_base_share"].iloc[0]
    for bad, message in (
        (["--fractions", "1.5"], "--fractions"),
        (["--unlearned", str(tmp_path)], "model.safetensors"),
    ):
        capsys.readouterr()
        assert probe.main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_quantization_probe_on_the_tiny_demo(demo, tmp_path, capsys):
    """Every demo model x scheme gets a row with the original-model control; a scheme the model cannot take and a
    missing run exit 2 with one line, before anything is written."""
    probe = load("quantization_probe")
    out = tmp_path / "probe"
    assert probe.main(["--from-run", str(demo), "--schemes", "int8", "int4", "--out", str(out)]) == 0  # model: tiny
    rates = pd.read_csv(out / "rates.csv")
    assert sorted(rates["method"].unique()) == sorted(DEMO_METHODS)
    assert set(rates["condition"]) == {"quantize[int8/g32]", "quantize[int4/g32]"}
    assert rates["original_accuracy_after"].between(0, 1).all() and (rates["family"] == "quantization").all()
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "quantization_probe" and record["config"]["model"] == "tiny"
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert probe.main(["--from-run", str(demo), "--model", "tiny", "--out", str(bad)]) == 2  # source: not a GGUF
    assert "no GGUF source file" in capsys.readouterr().err and not bad.exists()
    assert probe.main(["--from-run", str(tmp_path / "nope"), "--model", "tiny", "--out", str(bad)]) == 2
    assert "no unlearned/<method>/ models" in capsys.readouterr().err and not bad.exists()


def test_compare_script_writes_the_table_and_refuses_a_missing_run(tmp_path, capsys):
    compare_recovery = load("compare_recovery")
    for name, frame in (("a", per_item(["a", "b"], {"focus": ["a"]})), ("b", per_item(["a", "b"], {"focus": []}))):
        (tmp_path / name).mkdir()
        frame.to_csv(tmp_path / name / "per_item.csv", index=False)
    out = tmp_path / "paired.csv"
    assert compare_recovery.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("condition")
    assert (table.loc["focus", "recovered_a"], table.loc["focus", "recovered_b"], table.loc["focus", "n"]) == (1, 0, 2)
    assert compare_recovery.main([str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
    assert "nope/per_item.csv: no such file" in capsys.readouterr().err


def test_is_it_gone_table_heatmap_and_worst_case(demo, tmp_path, capsys):
    """Per method the worst case over the conditions (named, with its interval and K), per family the worst case,
    the heatmap; the original's arms are scored once for both methods; a bad condition exits 2 before any work."""
    out = tmp_path / "gone"
    attacks = ["focus", "quantize:scheme=int4", "relearn_unrelated:steps=1", "logit_lens", "few_shot:shots=1"]
    code = run_script("is_it_gone", *COMMON, "--from-run", demo, "--methods", *DEMO_METHODS, "--attacks", *attacks,
                      "--out", out)  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "table.csv").set_index("method")
    rates = pd.read_csv(out / "rates.csv")
    assert list(table.index) == list(DEMO_METHODS) and (table["of"] == len(attacks)).all()
    for method, g in rates.groupby("method"):
        top = g.loc[g["recovery_rate"].idxmax()]
        assert table.loc[method, "worst_rate"] == pytest.approx(top["recovery_rate"])
        row = table.loc[method]
        assert row["worst_ci_low"] <= row["worst_rate"] <= row["worst_ci_high"]
    worst = pd.read_csv(out / "worst_by_family.csv")
    assert set(worst["family"]) == set(rates["family"]) and (worst["of"] >= 1).all()
    assert (out / "is_it_gone.png").read_bytes()[:4] == b"\x89PNG"
    # the relearned original is trained and scored once for both methods (counted in
    # tests/unit/recovery/test_shared_original.py): each run has its training row, the same row replayed
    trained = [pd.read_csv(p) for p in sorted(out.glob("recovery/*/details/relearn_unrelated*training.csv"))]
    rows = [t[t["model"] == "original"].reset_index(drop=True) for t in trained]
    assert len(rows) == len(DEMO_METHODS) and all(len(r) == 1 for r in rows)
    pd.testing.assert_frame_equal(rows[0], rows[1])
    # resumed: the finished method runs are copied, not recomputed, and give the same table; other conditions rerun
    capsys.readouterr()
    again = tmp_path / "again"
    code = run_script("is_it_gone", *COMMON, "--from-run", demo, "--methods", *DEMO_METHODS, "--attacks", *attacks,
                      "--resume-from", out, "--out", again)  # fmt: skip
    assert code == 0 and capsys.readouterr().err.count("reused") == len(DEMO_METHODS)
    pd.testing.assert_frame_equal(pd.read_csv(again / "table.csv"), pd.read_csv(out / "table.csv"))
    assert (again / "recovery" / "ga_gdr" / "details" / "index.json").is_file()
    other = tmp_path / "other"
    code = run_script("is_it_gone", *COMMON, "--from-run", demo, "--methods", "ga_gdr", "--attacks", "focus",
                      "--resume-from", out, "--out", other)  # fmt: skip
    assert code == 0 and "reused" not in capsys.readouterr().err
    # same labels, one setting different (as when a default changes between versions): not reused
    record_path = again / "recovery" / "npo_gdr" / "run.json"
    record = json.loads(record_path.read_text())
    lens = next(s for s in record["config"]["attack_settings"] if s["name"] == "logit_lens")
    assert lens["context"] == "own" and record["config"]["attacks"][attacks.index("logit_lens")] == "logit_lens"
    lens["context"] = "bare"
    record_path.write_text(json.dumps(record))
    code = run_script("is_it_gone", *COMMON, "--from-run", demo, "--methods", "npo_gdr", "--attacks", *attacks,
                      "--resume-from", again, "--out", tmp_path / "edited")  # fmt: skip
    assert code == 0 and "reused" not in capsys.readouterr().err
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert run_script("is_it_gone", *COMMON, "--from-run", demo, "--methods", "ga_gdr", "--attacks", "teleport",
                      "--out", bad) == 2  # fmt: skip
    assert "unknown attack 'teleport'" in capsys.readouterr().err and not bad.exists()
