"""experiments/keyword_aware_unlearning.py: the matched-retain selection against hand-made checkpoint tables, the
fixed tuning split, the worst case over conditions, and the whole script on the tiny model (baselines in one run,
keyguard + ablations merged in a second), with bad input refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.unit.test_experiments import load, run_script

#: Five attack families, two relearning step counts, a condition with a control that is not random words, and the
#: registry's `neutral` control (a condition here too).
ATTACKS = (
    "--attacks", "focus", "neutral", "patch", "quantize:scheme=int4", "relearn_unrelated:steps=1",
    "relearn_unrelated:steps=2", "ablate_direction",
)  # fmt: skip
COMMON = ("--model", "tiny", "--n-boot", "100", "--quiet", *ATTACKS)


@pytest.fixture(scope="module")
def kau():
    return load("keyword_aware_unlearning")


def ckpt(rows):
    return pd.DataFrame(rows, columns=["variant", "baseline", "step", "forget_accuracy", "utility_accuracy"])


def test_target_utility_is_the_best_baseline_point_under_the_forget_bound(kau):
    table = ckpt(
        [
            ("a", True, 0, 1.0, 1.0),
            ("a", True, 4, 0.10, 0.80),
            ("a", True, 8, 0.05, 0.60),
            ("b", True, 3, 0.15, 0.90),
            ("b", True, 6, 0.30, 0.95),
            ("new", False, 2, 0.0, 1.0),  # not a baseline: never the target
        ]
    )
    t = kau.target_utility(table)
    assert (t["target_utility"], t["target_variant"], t["target_step"]) == (0.90, "b", 3)
    # no baseline reaches the bound: the lowest-forget baseline checkpoint
    t = kau.target_utility(ckpt([("a", True, 2, 0.5, 0.7), ("a", True, 4, 0.4, 0.6), ("b", True, 1, 0.4, 0.65)]))
    assert (t["target_utility"], t["target_variant"]) == (0.65, "b") and "no baseline" in t["target_rule"]
    with pytest.raises(ValueError):
        kau.target_utility(ckpt([("new", False, 2, 0.0, 1.0)]))


def test_matched_checkpoint_lowest_forget_within_two_points(kau):
    table = ckpt(
        [
            ("m", True, 0, 1.0, 1.0),
            ("m", True, 1, 0.6, 0.99),
            ("m", True, 2, 0.3, 0.98),
            ("m", True, 3, 0.3, 0.985),
            ("m", True, 4, 0.1, 0.97),
        ]
    )
    chosen = kau.matched_checkpoint(table, 1.0)
    assert int(chosen["step"]) == 3  # forget 0.3 ties: the higher retain wins; step 4 misses 0.98
    assert int(kau.matched_checkpoint(table, 0.99)["step"]) == 4
    assert kau.matched_checkpoint(ckpt([("m", True, 0, 1.0, 1.0), ("m", True, 1, 0.2, 0.5)]), 1.0) is None


def test_tuning_split_is_fixed_disjoint_and_order_free(kau):
    ids = [f"f{i}" for i in range(31)]
    tuning, held = kau.tuning_split(ids)
    assert len(tuning) == 16 and len(held) == 15 and not set(tuning) & set(held)
    assert kau.tuning_split(list(reversed(ids))) == (tuning, held)


def rates_table(rows) -> pd.DataFrame:
    """``(condition, kind, family, emphasis, subset, n, recovered)`` rows -> a rates.csv-shaped table."""
    df = pd.DataFrame(rows, columns=["condition", "kind", "family", "emphasis", "subset", "n", "recovered"])
    return df.assign(recovery_rate=df["recovered"] / df["n"])


def test_worst_case_over_conditions(kau):
    rates = rates_table(
        [
            ("focus", "strategy", "keywords_named", "keywords", "all", 10, 2),
            ("neutral", "strategy", "instruction", "keywords", "all", 10, 4),
            ("patch[0-29]", "intervention", "activation_patching", "keywords", "all", 10, 3),
            ("focus", "strategy", "keywords_named", "random", "all", 10, 9),
        ]
    )
    pick = kau.worst_pick(rates, "all")
    assert (pick["rate"], pick["condition"], pick["k"], pick["n"], pick["of"]) == (0.4, "neutral", 4, 10, 3)
    # the exact Clopper–Pearson interval of 4 / 10: Beta(0.025; 4, 7) and Beta(0.975; 5, 6)
    assert pick["ci_low"] == pytest.approx(0.12155, abs=1e-5) and pick["ci_high"] == pytest.approx(0.73762, abs=1e-5)
    assert kau.worst_pick(rates, "all", ["focus", "patch[0-29]"])["condition"] == "patch[0-29]"
    assert kau.worst_pick(rates, "all", emphasis=("keywords", "random"))["condition"] == "focus (control)"
    assert np.isnan(kau.worst_pick(rates, "tuning")["rate"])
    cols = kau.worst_columns(rates)
    # by FAMILY: neutral (instruction, imitated by train_instruction), focus (keywords named) and patch are trained
    # against, so none of these three conditions is a held-out attack
    assert np.isnan(cols["worst_recovery_held_out_attacks"]) and cols["n_eligible_tuning"] == 0
    assert (cols["worst_recovery_any"], cols["worst_recovery_all_k"]) == (0.9, 4)
    assert (cols["worst_recovery_keywords_named"], cols["worst_recovery_activation_patching"]) == (0.2, 0.3)
    rates = pd.concat(
        [
            rates,
            rates_table(
                [
                    ("steer[0-14]c1.0", "intervention", "residual_steering", "keywords", "all", 10, 1),
                    ("quantize[int4/g32]", "transform", "quantization", "keywords", "all", 10, 5),
                    ("relearn_unrelated[k1]", "transform", "relearning", "keywords", "all", 10, 7),
                    ("few_shot[k1]", "strategy", "few_shot", "keywords", "all", 10, 8),
                ]
            ),
        ],
        ignore_index=True,
    )
    cols = kau.worst_columns(rates)
    # held-out attacks: steer, quantize, relearn_unrelated, few_shot -> few_shot's 0.8
    assert (cols["worst_recovery_held_out_attacks"], cols["worst_condition_held_out_attacks"]) == (0.8, "few_shot[k1]")
    # the goal's families: keyword emphasis (prompt + activations) and quantization, not relearning or few-shot
    assert (cols["worst_recovery_goal_families"], cols["worst_condition_goal_families"]) == (0.5, "quantize[int4/g32]")
    assert cols["recovery_relearn_unrelated[k1]"] == 0.7 and cols["worst_recovery_relearning"] == 0.7
    assert cols["worst_recovery_all"] == 0.8


def toy_run():
    """Four rows on ten items eligible for all: two matched baselines, keyguard, and an equal-steps baseline row
    (never a best baseline) that recovers nothing. Each condition recovers the first ``count`` items."""
    ids = [f"i{k}" for k in range(10)]
    spec = {  # variant: method, baseline, matched, utility, counts for focus / quantize / relearn
        "b1": ("ga", True, True, 0.9, (6, 10, 3)),
        "b2": ("rmu", True, True, 1.0, (4, 10, 2)),
        "keyguard": ("keyguard", False, True, 1.0, (0, 10, 1)),
        "b2@step3": ("rmu", True, False, 0.8, (0, 0, 0)),
    }
    conditions = {
        "focus": "keywords_named",
        "quantize[int4/g32]": "quantization",
        "relearn_unrelated[k1]": "relearning",
    }
    table = pd.DataFrame(
        [
            {"variant": v, "method": m, "baseline": b, "matched": mt, "matched_step": 3, "forget_accuracy": 0.1,
             "utility_accuracy": u, "target_utility": 1.0}
            for v, (m, b, mt, u, _) in spec.items()
        ]
    )  # fmt: skip
    rates, outcomes = [], []
    for v, (*_, counts) in spec.items():
        for (condition, family), count in zip(conditions.items(), counts):
            rates.append((condition, "x", family, "keywords", "all", 10, count))
            outcomes += [(v, i, condition, int(k < count)) for k, i in enumerate(ids)]
    rates = rates_table(rates).assign(variant=[v for v in spec for _ in conditions])
    return table, rates, pd.DataFrame(outcomes, columns=["variant", "item_id", "condition", "recovered"]), ids


def test_family_table_best_baseline_and_paired_tests_by_hand(kau):
    table, rates, outcomes, ids = toy_run()
    fam = kau.family_table(table, rates, outcomes, {"all": ids}).set_index(["variant", "group"])
    kg = fam.loc["keyguard"]
    # best baseline per family: the lowest matched-baseline worst case (b2@step3's zeros never count); ties
    # (quantization: 1.0 both) go to the higher utility accuracy (b2)
    assert set(fam["best_baseline"]) == {"b2"}
    # keywords_named: keyguard 0 vs b2's 4 on the same 10 items, 4 discordant pairs -> p = 2 * 0.5**4
    assert (kg.loc["keywords_named", "recovered_best_paired"], kg.loc["keywords_named", "p_vs_best"]) == (4, 0.125)
    # relearning: 1 vs 2 (one discordant pair) -> p = 1; quantization: equal -> 1
    assert kg.loc["relearning", "p_vs_best"] == 1.0 and kg.loc["quantization", "p_vs_best"] == 1.0
    # Holm over the three families of the row: 0.125 * 3; the pre-named groups are not adjusted
    assert kg.loc["keywords_named", "p_vs_best_holm"] == pytest.approx(0.375)
    assert kg.loc["goal_families", "rate"] == 1.0 and kg.loc["goal_families", "p_vs_best_holm"] == 1.0
    assert kg.loc["overall", "k"] == 10 and kg.loc["overall", "of"] == 3
    assert np.isnan(fam.loc[("b2", "keywords_named"), "p_vs_best"])  # the best baseline itself
    goal = kau.goal(table, fam.reset_index(), rates)
    assert list(goal) == ["keyguard"]
    g = goal["keyguard"]
    assert g["forget_le_0.15"] and g["utility_matched"] and not g["worst_goal_families_le_0.10"] and not g["met"]
    # relearning: 0.1 < 0.3 (b1) and 0.2 (b2); the equal-steps row's 0.0 is not a matched baseline
    assert g["relearning"] == {"relearn_unrelated[k1]": True} and g["relearning_below_every_baseline"]
    assert (g["best_baseline"], g["best_baseline_rate"], g["worst_goal_families"]) == ("b2", 1.0, 1.0)


def test_a_baseline_that_does_not_unlearn_is_never_the_best_baseline(kau):
    """b2 at forget accuracy 0.5 (above the goal's 0.15) is no comparator: b1 becomes the best baseline everywhere,
    with b2's lower rates ignored, and the relearning check compares with b1 alone; with no baseline under the bound
    every matched baseline counts again."""
    table, rates, outcomes, ids = toy_run()
    table.loc[table["variant"] == "b2", "forget_accuracy"] = 0.5
    assert kau.comparators(table) == ["b1"]
    fam = kau.family_table(table, rates, outcomes, {"all": ids}).set_index(["variant", "group"])
    assert set(fam["best_baseline"]) == {"b1"}
    # keywords_named: keyguard 0 vs b1's 6 -> p = 2 * 0.5**6
    assert fam.loc[("keyguard", "keywords_named"), "p_vs_best"] == pytest.approx(2 * 0.5**6)
    assert fam.loc[("b2", "keywords_named"), "p_vs_best"] == pytest.approx(2 * 0.5**2)  # b2 is compared, too
    g = kau.goal(table, fam.reset_index(), rates)["keyguard"]
    assert g["best_baseline"] == "b1" and g["relearning_below_every_baseline"]
    table.loc[table["variant"] == "b1", "forget_accuracy"] = 0.9
    assert kau.comparators(table) == ["b1", "b2"]


def test_held_out_attacks_share_no_family_with_any_training_rewrite(kau):
    """The family rule, for every keyguard variant and each of its ablations: a held-out condition's family is never
    a family the variant trains on (its training rewrites included, from ITS OWN defaults + overrides), and the
    imitating rewrites carry the imitated family; steer is held out for keyguard, not for keyguard_steer / keyguard2."""
    from unpact_mech.attacks import ATTACKS, attack_names
    from unpact_mech.unlearning import UNLEARNING_METHODS
    from unpact_mech.unlearning.methods.keyguard import TRAIN_PROMPTS, trained_families

    by_name = {a.name: a for a in TRAIN_PROMPTS}
    assert by_name["train_instruction"].family == ATTACKS["neutral"].family
    assert by_name["train_suffix"].family == ATTACKS["repeat_keywords"].family
    labels = attack_names()
    all_variants = kau.variants(list(kau.NEW_METHODS), ablations=True)
    assert {v.method for v in all_variants} == set(kau.NEW_METHODS) and len(kau.NEW_METHODS) == 7
    for variant in all_variants:
        hp = UNLEARNING_METHODS[variant.method].hyperparameters | variant.hyperparameters
        families = trained_families(variant.hyperparameters, method=variant.method)
        held_out = kau.held_out_conditions(labels, families)
        assert all(ATTACKS[c].family not in families for c in held_out), variant.name
        trained = {a.family for a in TRAIN_PROMPTS} if hp["prompt_attacks"] > 0 or hp["retain_attacks"] > 0 else set()
        trained |= {
            ATTACKS[a].family
            for a, w in (("steer", "steer_attacks"), ("quantize", "quant_weight"), ("quantize", "grid_snap"))
            if hp[w] > 0
        }
        assert not set(held_out) & {c for c in labels if ATTACKS[c].family in trained}, variant.name
        assert ("steer" in held_out) == (hp["steer_attacks"] == 0), variant.name
    for method, steer_held_out in (("keyguard", True), ("keyguard_steer", False), ("keyguard2", False)):
        assert ("steer" in kau.held_out_conditions(labels, trained_families(method=method))) == steer_held_out
    assert "steer" in kau.held_out_conditions(labels, trained_families({"steer_attacks": 0.0}, method="keyguard2"))
    default = kau.held_out_conditions(labels, trained_families())
    assert default == [
        "repeat_question", "scale", "steer", "pasta", "quantize", "relearn_unrelated", "relearn_split", "logit_lens",
        "ablate_direction", "few_shot", "rephrase",
    ]  # fmt: skip
    # the table's held-out attacks leave out what ANY of its keyguard variants trains on (merged rows included)
    union = kau.run_trained_families([("rmu", {}), ("keyguard", {}), ("keyguard2", {"quant_weight": 0.0})])
    assert union == trained_families() | {ATTACKS["steer"].family}
    assert kau.parse_hyperparameters("steer_attacks=0 late_weight=0.3") == {"steer_attacks": 0.0, "late_weight": 0.3}
    assert kau.parse_hyperparameters(float("nan")) == {}


def test_ablations_cover_every_non_zero_ingredient_of_each_keyguard_variant(kau):
    names = [v.name for v in kau.variants(["rmu", "keyguard", "keyguard2"], ablations=True)]
    assert names == ["rmu", "keyguard", "keyguard2"] + [f"keyguard-no_{i}" for i in kau.INGREDIENTS] + [
        f"keyguard2-no_{i}"
        for i in (
            "prompt_attacks", "activation_attacks", "keyword_weight", "retain_attacks", "late_answer_weight",
            "steer_attacks", "noise_weight", "quant_weight",
        )
    ]  # fmt: skip
    assert [v.name for v in kau.variants(["keyguard_steer"], ablations=False)] == ["keyguard_steer"]
    no_steer = next(v for v in kau.variants(["keyguard_steer"], ablations=True) if v.name.endswith("no_steer_attacks"))
    assert (no_steer.method, no_steer.hyperparameters) == ("keyguard_steer", {"steer_attacks": 0.0})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Baselines in one run; keyguard + one ablation in another, matched to the baselines' R* given by --target-utility;
    then the two combined by --merge alone (no --methods)."""
    base = tmp_path_factory.mktemp("kau") / "baselines"
    assert run_script("keyword_aware_unlearning", *COMMON, "--methods", "ga", "rmu", "--out", base) == 0
    target = json.loads((base / "summary.json").read_text())["target"]["target_utility"]
    kg = base.parent / "keyguard"
    assert (
        run_script(
            "keyword_aware_unlearning",
            *COMMON,
            "--methods",
            "keyguard",
            "--ablations",
            "--variants",  # two of the six rows (the naming of all six is tested above)
            "keyguard",
            "keyguard-no_late_weight",
            "--target-utility",
            str(target),
            "--out",
            kg,
        )
        == 0
    )
    new = base.parent / "combined"
    assert run_script("keyword_aware_unlearning", *COMMON, "--methods", "--merge", base, kg, "--out", new) == 0
    return base, kg, new


def test_the_script_on_tiny(runs, kau):
    base, kg, new = runs
    for rel in (
        "run.json",
        "results.csv",
        "summary.json",
        "table.csv",
        "variants.csv",
        "checkpoints.csv",
        "rates.csv",
        "outcomes.csv",
        "families.csv",
        "families.md",
        "tradeoff.png",
        "checkpoints.png",
    ):
        assert (new / rel).is_file(), rel
    table = pd.read_csv(new / "variants.csv")
    assert list(table["variant"]) == ["ga", "rmu", "keyguard", "keyguard-no_late_weight"]
    assert table["target_utility"].nunique() == 1
    target = float(table["target_utility"].iloc[0])
    done = table[table["matched_step"].notna()]
    assert len(done) >= 3
    # matched = utility within 2 points of the target; re-training to the step reproduces the recorded accuracies
    assert (done["utility_accuracy"] >= target - 0.02 - 1e-9).all()
    assert (done["forget_accuracy"] - done["forget_accuracy_retrained"]).abs().max() < 1e-9
    assert (done["utility_accuracy"] - done["utility_accuracy_retrained"]).abs().max() < 1e-9
    for col in ("worst_recovery_all", "worst_recovery_any", "utility_destructive_rate"):
        assert done[col].between(0, 1).all(), col
    assert (done["worst_recovery_any"] >= done["worst_recovery_all"] - 1e-12).all()
    ckpts = pd.read_csv(new / "checkpoints.csv")
    assert set(ckpts["variant"]) == set(table["variant"]) and (ckpts.groupby("variant")["step"].min() == 0).all()
    summary = json.loads((new / "summary.json").read_text())
    assert summary["target"]["target_utility"] == target
    assert set(summary["tuning_items"]).isdisjoint(summary["held_out_items"])
    for v in done["variant"]:  # merged variants keep their recovery files in their own run
        assert ((base if v in ("ga", "rmu") else kg) / "recovery" / v / "rates.csv").is_file()
    run = json.loads((new / "run.json").read_text())
    assert run["config"]["merge"] == [str(base), str(kg)]
    # the combined table equals its parts (worst cases recomputed from the merged rates)
    parts = pd.concat([pd.read_csv(base / "variants.csv"), pd.read_csv(kg / "variants.csv")], ignore_index=True)
    pd.testing.assert_series_equal(parts["worst_recovery_all"], table["worst_recovery_all"])
    # every family of the attacks has its worst-case column; relearning per step count
    rates = pd.read_csv(new / "rates.csv")
    assert set(rates["family"]) == {
        "keywords_named", "instruction", "activation_patching", "quantization", "relearning", "direction_ablation",
    }  # fmt: skip
    for col in ("worst_recovery_quantization", "recovery_relearn_unrelated[k1]", "recovery_relearn_unrelated[k2]"):
        assert done[col].between(0, 1).all(), col
    # two paths to the same counts: rates.csv (the runner's per-item arms) and outcomes.csv (eligible x condition)
    outcomes = pd.read_csv(new / "outcomes.csv")
    counts = outcomes.groupby(["variant", "condition"], sort=False)["recovered"].sum()
    keyword = rates[(rates["subset"] == "all") & (rates["emphasis"] == "keywords")]
    assert (keyword.set_index(["variant", "condition"])["recovered"] == counts.reindex(keyword.set_index(
        ["variant", "condition"]).index)).all()  # fmt: skip
    # the interval is the exact one of k / n
    from unpact_mech.stats import clopper_pearson, mcnemar_exact

    r = done.iloc[-1]
    assert (r["worst_recovery_all_ci_low"], r["worst_recovery_all_ci_high"]) == pytest.approx(
        clopper_pearson(int(r["worst_recovery_all_k"]), int(r["worst_recovery_all_n"]))
    )
    # the paired test against the best baseline, recomputed from outcomes.csv
    fam = pd.read_csv(new / "families.csv", keep_default_na=False, na_values=[""])
    assert set(fam["group"]) == set(rates["family"]) | {"goal_families", "overall"}
    assert set(fam["subset"]) == {"all", "tuning", "held_out"} and set(fam["best_baseline"]) <= {"ga", "rmu", ""}
    row = fam[(fam["variant"] == "keyguard") & (fam["subset"] == "all") & (fam["group"] == "overall")].iloc[0]
    best = fam[(fam["variant"] == row["best_baseline"]) & (fam["subset"] == "all") & (fam["group"] == "overall")]
    wide = {
        v: g.pivot(index="item_id", columns="condition", values="recovered") for v, g in outcomes.groupby("variant")
    }
    common = sorted(set(wide["keyguard"].index) & set(wide[row["best_baseline"]].index))
    x = wide["keyguard"].loc[common, row["condition"]].astype(bool)
    y = wide[row["best_baseline"]].loc[common, best.iloc[0]["condition"]].astype(bool)
    assert (row["n_paired"], row["recovered_paired"], row["recovered_best_paired"]) == (len(common), x.sum(), y.sum())
    assert row["p_vs_best"] == pytest.approx(mcnemar_exact(x, y))
    # the README's tables: a k/n cell per variant and family, the relearning conditions, the best baseline per group
    md = (new / "families.md").read_text().splitlines()
    assert md[0] == "|  | " + " | ".join(done["variant"]) + " |"
    for label in [f"worst: {f}" for f in rates["family"].unique()] + ["relearn_unrelated[k2]", "worst: overall"]:
        line = next(x for x in md if x.startswith(f"| {label} |"))
        assert len(line.split(" | ")) == len(done) + 1, line
    assert sum(x.startswith("| overall | ") for x in md) == 1
    # the third table: every variant at equal training steps, from checkpoints.csv
    head = md.index("| step | " + " | ".join(ckpts["variant"].drop_duplicates()) + " |")
    assert len(md) - head - 2 == ckpts["step"].nunique()
    # the goal, checked for every keyguard-family row with a matched checkpoint
    kg_rows = set(done.loc[done["method"] == "keyguard", "variant"])
    assert set(summary["goal"]) == kg_rows and all("met" in g and "relearning" in g for g in summary["goal"].values())


def test_from_run_and_clashing_merge_are_refused(runs, tmp_path, capsys):
    base, kg, _ = runs
    for argv, message in (
        (["--methods"], "at least one method"),
        (["--methods", "rmu", "--target-utility", "1.5"], "--target-utility"),
        (["--methods", "keyguard", "--ablations", "--variants", "keyguard-no_nothing"], "--variants"),
        (["--from-run", base], "--from-run"),
        (["--methods", "ga", "--merge", base], "variant(s) ga"),
        (["--methods", "rmu", "--merge", tmp_path], "--merge"),
        (["--methods", "rmu", "--horizon", "0.5"], "--horizon"),
        (["--methods", "rmu", "--attacks", "focus", "no_such_attack"], "no_such_attack"),
        (["--methods", "ga", "--equal-steps"], "add keyguard"),
        (["--methods", "ga", "--equal-steps", "3", "--eval-every", "2"], "--equal-steps 3"),
    ):
        out = tmp_path / "out"
        assert run_script("keyword_aware_unlearning", *COMMON, *map(str, argv), "--out", out) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()


def test_merge_recomputes_from_the_recovery_files_and_takes_a_run_of_the_earlier_release(runs, tmp_path):
    """A merged run's rates come from its recovery files when they are there (a rates.csv that says otherwise is
    not read); a run written before the battery table (no family / recovered columns in rates.csv, no matched
    column, no outcomes.csv, no recovery files) merges with the same worst cases, its rows without paired tests."""
    base, kg, new = runs
    tampered = tmp_path / "tampered"
    shutil.copytree(base, tampered)
    rates = pd.read_csv(tampered / "rates.csv")
    rates.assign(recovery_rate=0.0, recovered=0).to_csv(tampered / "rates.csv", index=False)
    out = tmp_path / "recomputed"
    assert run_script("keyword_aware_unlearning", *COMMON, "--methods", "--merge", tampered, kg, "--out", out) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "families.csv"), pd.read_csv(new / "families.csv"))
    old = tmp_path / "old"
    shutil.copytree(base, old)
    (old / "outcomes.csv").unlink()
    shutil.rmtree(old / "recovery")
    pd.read_csv(old / "rates.csv").drop(columns=["family", "recovered"]).to_csv(old / "rates.csv", index=False)
    pd.read_csv(old / "variants.csv").drop(columns=["matched"]).to_csv(old / "variants.csv", index=False)
    out = tmp_path / "merged"
    assert run_script("keyword_aware_unlearning", *COMMON, "--methods", "--merge", old, kg, "--out", out) == 0
    table, before = pd.read_csv(out / "variants.csv"), pd.read_csv(new / "variants.csv")
    pd.testing.assert_series_equal(table["worst_recovery_all"], before["worst_recovery_all"])
    pd.testing.assert_series_equal(table["worst_recovery_all_k"], before["worst_recovery_all_k"])
    fam = pd.read_csv(out / "families.csv")
    assert fam.loc[fam["variant"].isin(["ga", "rmu"]), "p_vs_best"].isna().all()


def test_equal_steps_n_trains_the_baselines_on_and_still_matches_within_the_horizon(tmp_path):
    """``--equal-steps 8`` in a baselines-only run: ga (4 steps at --horizon 1) trains on to step 8 and is
    attacked there as row ga@step8 with that checkpoint's accuracies; its matched row is still chosen in steps 1-4."""
    out = tmp_path / "eq"
    argv = ("--model", "tiny", "--quiet", "--attacks", "quantize:scheme=int4", "--methods", "ga", "--horizon", "1")
    assert run_script("keyword_aware_unlearning", *argv, "--equal-steps", "8", "--out", out) == 0
    ckpts = pd.read_csv(out / "checkpoints.csv")
    assert sorted(ckpts["step"]) == list(range(9))
    table = pd.read_csv(out / "variants.csv").set_index("variant")
    assert list(table.index) == ["ga", "ga@step8"]
    assert table.loc["ga", "matched"] and not table.loc["ga@step8", "matched"]
    assert 1 <= table.loc["ga", "matched_step"] <= table.loc["ga", "horizon_steps"] == 4  # ga's recipe: 4 steps
    assert table.loc["ga@step8", "matched_step"] == 8
    at8 = ckpts[ckpts["step"] == 8].iloc[0]
    assert table.loc["ga@step8", "forget_accuracy"] == pytest.approx(at8["forget_accuracy"])
    assert table.loc["ga@step8", "forget_accuracy_retrained"] == pytest.approx(at8["forget_accuracy"])


def test_steps_table_by_hand(kau):
    ckpts = pd.DataFrame(
        [("a", 0, 1.0, 1.0), ("a", 1, 0.5, 0.99), ("b", 0, 1.0, 1.0), ("b", 1, 0.8, 1.0), ("b", 2, 0.25, 0.875)],
        columns=["variant", "step", "forget_accuracy", "utility_accuracy"],
    )
    lines = kau.steps_markdown(ckpts).splitlines()
    assert lines[0] == "| step | a | b |"
    assert lines[2:] == ["| 0 | 1.00 / 1.00 | 1.00 / 1.00 |", "| 1 | 0.50 / 0.99 | 0.80 / 1.00 |",
                         "| 2 | — | 0.25 / 0.88 |"]  # fmt: skip
