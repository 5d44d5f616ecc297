"""run_recovery end to end on the tiny model with a gradient-ascent 'unlearned' copy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unpact_mech.errors import InputError
from unpact_mech.recovery import RecoveryConfig, run_recovery
from unpact_mech.recovery.run import RATE_COLUMNS
from unpact_mech.scoring import evaluate_items
from unpact_mech.stats import mcnemar_exact


@pytest.fixture(scope="module")
def result(original, ga_unlearned, synthetic_items):
    cfg = RecoveryConfig(
        attacks=("focus", "repeat_question", "uppercase", "patch", "scale:factor=3"), keyword_source="data"
    )
    return run_recovery(original, ga_unlearned, synthetic_items, cfg, progress=False)


def test_eligibility_and_destructive_rate_match_plain_evaluation(result, original, ga_unlearned, synthetic_items):
    o = evaluate_items(original, synthetic_items, progress=False).set_index("item_id")
    u = evaluate_items(ga_unlearned, synthetic_items, progress=False).set_index("item_id")
    forget = [it.id for it in synthetic_items if it.split == "forget"]
    eligible = [i for i in forget if o.loc[i, "correct"] == 1 and u.loc[i, "correct"] == 0]
    s = result.summary
    assert s["n_eligible"] == len(eligible) > 0  # the GA steps made the model forget something
    for split in ("utility", "retain"):  # the held-out facts and the trained-on anchor, apart
        ids = [it.id for it in synthetic_items if it.split == split]
        known = [i for i in ids if o.loc[i, "correct"] == 1]
        lost = sum(1 for i in known if u.loc[i, "correct"] == 0)
        assert s[f"{split}_destructive_rate_k"] == lost and s[f"{split}_destructive_rate_n"] == len(known) > 0
        assert s[f"{split}_destructive_rate"] == pytest.approx(lost / len(known))
        assert (
            s[f"{split}_destructive_rate_ci_low"]
            <= s[f"{split}_destructive_rate"]
            <= s[f"{split}_destructive_rate_ci_high"]
        )
    assert s["n_utility"] == 12 and "utility_note" not in s


def test_rates_table_and_controls(result):
    rates = result.rates.set_index("condition")
    assert list(rates.index) == ["focus", "repeat_question", "uppercase", "patch[0,1]", "scale[0]x3.0"]
    assert ((rates.recovery_rate >= 0) & (rates.recovery_rate <= 1)).all()
    assert (rates.ci_low <= rates.recovery_rate).all() and (rates.recovery_rate <= rates.ci_high).all()
    assert (rates.recovered == (rates.recovery_rate * rates.n_eligible).round()).all()
    assert list(result.rates.columns[: len(RATE_COLUMNS)]) == list(RATE_COLUMNS)
    # paired tests: p_vs_random recomputed from the per-item table; Holm never below the raw p
    per = result.per_item
    emph = per[(per.condition == "focus") & (per.arm == "emphasis")]
    rand = per[(per.condition == "focus") & (per.emphasis == "random")]
    both = emph.set_index("item_id")["correct"].align(rand.set_index("item_id")["correct"], join="inner")
    assert rates.loc["focus", "p_vs_random"] == pytest.approx(
        mcnemar_exact(both[0].to_numpy(bool), both[1].to_numpy(bool))
    )
    assert (rates.p_vs_random_holm.dropna() >= rates.p_vs_random.dropna() - 1e-12).all()
    # the general control runs on the held-out utility items (retain columns stay empty with a utility split)
    assert rates["utility_accuracy_before"].notna().all() and rates["retain_accuracy_before"].isna().all()
    assert np.isnan(rates.loc["repeat_question"].get("random_control_rate", np.nan))  # no keywords -> no random control
    assert not np.isnan(rates.loc["focus", "random_control_rate"])
    assert "original_accuracy_after" in rates and np.isnan(
        rates.loc["patch[0,1]", "original_accuracy_after"]
    )  # identity
    # recomputing one rate from the per-item table gives the same number
    per = result.per_item
    focus = per[(per.condition == "focus") & (per.arm == "emphasis")]
    assert rates.loc["focus", "recovery_rate"] == pytest.approx(focus.correct.mean())
    # the gap fraction, recomputed from the per-item rows of the whole forget set (emphasis + forget_rest)
    attacked = per[(per.condition == "focus") & per.arm.isin(["emphasis", "forget_rest"])]
    base = per[per.kind == "baseline"]
    forget = attacked.item_id
    acc = {m: base[(base.model == m) & base.item_id.isin(forget)].correct.mean() for m in ("original", "unlearned")}
    assert len(attacked) == ((base.model == "original") & (base.split == "forget")).sum()
    assert rates.loc["focus", "gap_fraction"] == pytest.approx(
        (attacked.correct.mean() - acc["unlearned"]) / (acc["original"] - acc["unlearned"])
    )
    family = rates.loc["focus", "family"]
    assert result.summary["worst_case_by_family"][family]["rate"] == pytest.approx(
        rates[(rates.family == family) & ~rates.is_control.astype(bool)].recovery_rate.max()
    )


def test_intervention_rows_equal_an_independent_evaluation(result, original, ga_unlearned, synthetic_items):
    """The runner evaluates the eligible subset with positions aligned to it: an independent run must agree."""
    from unpact_mech.attacks import AttackEnv, get_attack
    from unpact_mech.scoring.tokens import encode_item

    per = result.per_item
    rows = per[(per.condition == "patch[0,1]") & (per.arm == "emphasis")].set_index("item_id")
    eligible = [it for it in synthetic_items if it.id in rows.index]
    positions = []
    for it in eligible:
        enc = encode_item(original, it).prompt
        positions.append(sorted({p for kw in it.keywords for p in enc.positions_of(kw)}))
    factory = get_attack("patch").resolve(ga_unlearned).interventions(positions, AttackEnv(original=original))
    again = evaluate_items(ga_unlearned, eligible, interventions=factory, progress=False).set_index("item_id")
    assert list(again.index) == list(rows.index)
    assert (again.correct == rows.correct).all()
    assert np.allclose(again.logprob, rows.logprob, atol=1e-6)


def test_keyword_table_and_bad_inputs(result, original, ga_unlearned, synthetic_items):
    kw = result.keywords.set_index("item_id")
    assert (
        kw.loc["syn-capital-zorblat", "keywords"] == "capital | Zorblat"
        and kw.loc["syn-capital-zorblat", "source"] == "data"
    )
    with pytest.raises(InputError, match="split 'forget'"):
        run_recovery(
            original,
            ga_unlearned,
            [it for it in synthetic_items if it.split == "retain"],
            RecoveryConfig(keyword_source="data"),
            progress=False,
        )
    with pytest.raises(InputError, match="unknown keyword source"):
        run_recovery(original, ga_unlearned, synthetic_items, RecoveryConfig(keyword_source="magic"), progress=False)


def test_attribution_keywords_are_keytokens_of_the_original(original, ga_unlearned, synthetic_items):
    from unpact_mech.attribution import keytoken_mask, occlusion
    from unpact_mech.scoring.tokens import encode_item

    cfg = RecoveryConfig(attacks="focus", keyword_source="attribution", controls=False)  # one name = one
    res = run_recovery(original, ga_unlearned, synthetic_items[:8] + synthetic_items[-4:], cfg, progress=False)
    for it, kw in zip(synthetic_items[:3], res.item_keywords[:3]):
        enc = encode_item(original, it)
        att = occlusion(original, enc, level="word")
        chosen = [u.text for u, keep in zip(att.units, keytoken_mask(att.scores).tolist()) if keep]
        assert kw.source == "attribution" and list(kw.words) == chosen and chosen
        assert sorted(kw.positions) == sorted(
            p for u, keep in zip(att.units, keytoken_mask(att.scores).tolist()) if keep for p in u.positions
        )
    per = res.per_item[res.per_item.condition == "focus"]
    first = per[per.item_id == synthetic_items[0].id]
    if len(first):  # eligible: the rewritten question names the KeyTokens
        assert first.question.item().startswith(f"Focus on the key words: {', '.join(res.item_keywords[0].words)}.")


def test_a_reused_original_baseline_gives_the_same_result(result, original, ga_unlearned, synthetic_items):
    """The demo evaluates the original once and passes it to every method's recovery: nothing may change."""
    import pandas as pd

    cfg = RecoveryConfig(
        attacks=("focus", "repeat_question", "uppercase", "patch", "scale:factor=3"), keyword_source="data"
    )
    baseline = evaluate_items(original, list(reversed(synthetic_items)), progress=False)  # any order
    reused = run_recovery(original, ga_unlearned, synthetic_items, cfg, original_baseline=baseline, progress=False)
    pd.testing.assert_frame_equal(reused.rates, result.rates)
    pd.testing.assert_frame_equal(
        reused.per_item.reset_index(drop=True), result.per_item.reset_index(drop=True), check_like=True
    )
    with pytest.raises(ValueError, match="lacks item"):
        run_recovery(original, ga_unlearned, synthetic_items, cfg, original_baseline=baseline.iloc[1:], progress=False)


def test_zero_eligible_items_keep_every_column(result, original, synthetic_items, tmp_path, capsys):
    """An "unlearned" model that still answers every forget item (the original itself) leaves 0 eligible items: the
    rates table has the same columns as with eligible items, every rate is missing (never 0, never a best condition
    picked from NaN), the summary says why, and the CLI prints a dash where a number is missing, never ``nan``."""
    from tests.cli_helpers import run_cli

    cfg = RecoveryConfig(attacks=("focus", "neutral", "patch"), keyword_source="data")
    empty = run_recovery(original, original, synthetic_items, cfg, progress=False)
    assert list(empty.rates.columns) == list(result.rates.columns)
    assert list(empty.rates["condition"]) == ["focus", "neutral", "patch[0,1]"]
    assert empty.summary["n_eligible"] == 0 and empty.eligible_ids == []
    assert empty.rates[["recovery_rate", "random_control_rate", "p_vs_random"]].isna().all().all()
    assert (empty.rates["n_eligible"] == 0).all()
    assert empty.summary["best_condition"] is None and empty.summary["best_recovery_rate"] is None
    assert empty.summary["eligible_note"].startswith("0 eligible forget items: the unlearned model still answers all")
    # the README's reading of the table works on it
    assert empty.rates[["condition", "recovery_rate", "random_control_rate"]].shape == (3, 3)

    code, out, err = run_cli(
        ["recover", "--original", "tiny", "--unlearned", "tiny", "--data", "builtin:synthetic_facts", "--strategy",
         "focus", "--intervention", "none", "--keywords", "data", "--out", tmp_path / "r", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "nan" not in out.lower() and "recovery — [—, —]" in out and "note: 0 eligible forget items" in out
    assert list(pd.read_csv(tmp_path / "r" / "rates.csv").columns[: len(RATE_COLUMNS)]) == list(RATE_COLUMNS)


def test_prompt_conditions_batched_together_equal_the_arm_by_arm_reference(
    original, ga_unlearned, synthetic_items, monkeypatch
):
    """``prompt_cache`` (default): the prompt-only conditions' arms go through ONE evaluation per model (full
    batches, shared prefix once) — same per-item rows in the same order, same rates and details as evaluating
    every condition and arm apart in two passes."""
    from unpact_mech.recovery import run as runner

    calls = []
    real = runner.evaluate_items
    monkeypatch.setattr(runner, "evaluate_items", lambda model, items, **k: calls.append(len(items)) or real(
        model, items, **k))  # fmt: skip
    attacks = ("focus", "neutral", "rephrase:style=quiz", "few_shot:shots=1", "scale:factor=3")
    fast = run_recovery(
        original, ga_unlearned, synthetic_items, RecoveryConfig(attacks=attacks, keyword_source="data"), progress=False
    )
    n_fast, calls[:] = len(calls), []
    ref = run_recovery(
        original, ga_unlearned, synthetic_items,
        RecoveryConfig(attacks=attacks, keyword_source="data", prompt_cache=False), progress=False,
    )  # fmt: skip
    # baselines 2 + prompt pass 2 (one per model) + one per arm of scale, against one per arm of every condition
    arms_of = ref.per_item[ref.per_item["kind"] != "baseline"].groupby("condition")["arm"].nunique()
    assert n_fast == 2 + 2 + arms_of["scale[0]x3.0"] and len(calls) == 2 + arms_of.sum()
    keys = ["model", "condition", "emphasis", "arm", "item_id", "generation", "correct", "rank"]
    pd.testing.assert_frame_equal(fast.per_item[keys], ref.per_item[keys])
    np.testing.assert_allclose(fast.per_item["logprob"], ref.per_item["logprob"], atol=1e-5)
    pd.testing.assert_frame_equal(fast.rates, ref.rates, atol=1e-5)
    assert sorted(fast.details) == sorted(ref.details)
    for key, table in ref.details.items():
        pd.testing.assert_frame_equal(fast.details[key].reset_index(drop=True), table.reset_index(drop=True))


def test_the_layer_ablation_fits_steer_on_its_own_items(tiny_model, ga_unlearned, synthetic_items):
    """``layer_sweep`` with the data-fitted ``steer``: its directions are cross-fitted on the swept items (it used to
    get an environment without items and fail with an IndexError), and the table has its rows over all the items."""
    from unpact_mech.attacks import select_keywords
    from unpact_mech.recovery.ablation import SweepConfig, layer_sweep
    from unpact_mech.scoring.tokens import encode_item

    forget = [it for it in synthetic_items if it.split == "forget"][:6]
    encoded = [encode_item(tiny_model, it) for it in forget]
    keywords = select_keywords("data", tiny_model, forget, encoded)
    cfg = SweepConfig(interventions=["steer"], layers=[0, 1], batch_size=8)
    table = layer_sweep(tiny_model, ga_unlearned, forget, keywords, cfg, progress=False)
    assert set(table["intervention"]) == {"steer"} and set(table["layer"].dropna().astype(int)) <= {0, 1}
    assert len(table) > 0 and table["n"].max() == len(forget)
