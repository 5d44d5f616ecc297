"""experiments/keyword_aware_unlearning.py: the matched-retain selection against hand-made checkpoint tables, the
fixed tuning split, the worst case over conditions, and the whole script on the tiny model (baselines in one run,
keyguard + ablations merged in a second), with bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.unit.test_experiments import load, run_script

COMMON = ("--model", "tiny", "--n-boot", "100", "--quiet")


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


def test_worst_case_over_conditions(kau):
    rates = pd.DataFrame(
        [
            ("focus", "strategy", "keywords", "all", 10, 0.2),
            ("neutral", "strategy", "keywords", "all", 10, 0.4),
            ("patch[0-29]", "intervention", "keywords", "all", 10, 0.3),
            ("focus", "strategy", "random", "all", 10, 0.9),
        ],
        columns=["condition", "kind", "emphasis", "subset", "n", "recovery_rate"],
    )
    assert kau.worst_case(rates, "all") == (0.4, "neutral")
    assert kau.worst_case(rates, "all", ["focus", "patch[0-29]"]) == (0.3, "patch[0-29]")
    assert kau.worst_case(rates, "all", emphasis=("keywords", "random")) == (0.9, "focus (random words)")
    cols = kau.worst_columns(rates)
    # by FAMILY: neutral (instruction, imitated by train_instruction), focus (keywords named) and patch are trained
    # against, so none of these three conditions is a held-out attack
    assert np.isnan(cols["worst_recovery_held_out_attacks"]) and cols["n_eligible_tuning"] == 0
    rates.loc[len(rates)] = ("steer[0-14]c1.0", "intervention", "keywords", "all", 10, 0.1)
    assert kau.worst_columns(rates)["worst_recovery_held_out_attacks"] == 0.1


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
    assert {v.method for v in all_variants} == set(kau.NEW_METHODS) and len(kau.NEW_METHODS) == 6
    for variant in all_variants:
        hp = UNLEARNING_METHODS[variant.method].hyperparameters | variant.hyperparameters
        families = trained_families(variant.hyperparameters, method=variant.method)
        held_out = kau.held_out_conditions(labels, families)
        assert all(ATTACKS[c].family not in families for c in held_out), variant.name
        trained = {a.family for a in TRAIN_PROMPTS} if hp["prompt_attacks"] > 0 or hp["retain_attacks"] > 0 else set()
        trained |= {
            ATTACKS[a].family for a, w in (("steer", "steer_attacks"), ("quantize", "quant_weight")) if hp[w] > 0
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
    """Baselines in one run; keyguard + ablations in another, matched to the baselines' R* given by --target-utility;
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
        "tradeoff.png",
        "checkpoints.png",
    ):
        assert (new / rel).is_file(), rel
    table = pd.read_csv(new / "variants.csv")
    assert list(table["variant"]) == ["ga", "rmu", "keyguard"] + [f"keyguard-no_{i}" for i in kau.INGREDIENTS]
    assert table["target_utility"].nunique() == 1
    target = float(table["target_utility"].iloc[0])
    done = table[table["matched_step"].notna()]
    assert len(done) >= 5
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
    assert summary["target"]["target_utility"] == target and summary["goal"]["evaluated"] in (True, False)
    assert set(summary["tuning_items"]).isdisjoint(summary["held_out_items"])
    for v in done["variant"]:  # merged variants keep their recovery files in their own run
        assert ((base if v in ("ga", "rmu") else kg) / "recovery" / v / "rates.csv").is_file()
    run = json.loads((new / "run.json").read_text())
    assert run["config"]["merge"] == [str(base), str(kg)]
    # the combined table equals its parts (worst cases recomputed from the merged rates)
    parts = pd.concat([pd.read_csv(base / "variants.csv"), pd.read_csv(kg / "variants.csv")], ignore_index=True)
    pd.testing.assert_series_equal(parts["worst_recovery_all"], table["worst_recovery_all"])


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
    ):
        out = tmp_path / "out"
        assert run_script("keyword_aware_unlearning", *COMMON, *map(str, argv), "--out", out) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()
