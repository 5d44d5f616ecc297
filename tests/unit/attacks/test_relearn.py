"""The relearning model transforms ``relearn_unrelated`` and ``relearn_split``: exact no-op at 0 steps, the direction
of one step, the input model untouched, determinism, cross-fitting by construction, option errors, the built-in
unrelated and fictional data, and both conditions inside a recovery run (with the fictional-facts calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unpact_mech import load_items, load_model
from unpact_mech.attacks.base import AttackEnv
from unpact_mech.attacks.registry import _convert
from unpact_mech.attacks.relearn import (
    RELEARN_ATTACKS,
    RelearnSplit,
    RelearnUnrelated,
    gold_targets,
    seeded_folds,
)
from unpact_mech.errors import InputError
from unpact_mech.scoring.judges import contains_answer, normalize_tokens
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.stats import rate


@pytest.fixture(scope="module", params=["transformer_lens", "nnsight"])
def model(request, original):
    """The tiny model on each backend (the shared ``original`` fixture for TransformerLens)."""
    return original if request.param == "transformer_lens" else load_model("tiny", backend="nnsight")


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def gold_nll(model, items) -> float:
    """Token-mean NLL of the gold answers, computed here from the per-item sums: −Σ S(i) / Σ |y_i|."""
    targets = gold_targets(model, items)
    scores = score_answers(model, [t.input_prefix for t in targets], [t.answer_ids for t in targets])
    return float(-scores.logprob_sum.double().sum() / sum(len(t.answer_ids) for t in targets))


def split_env(model, items, seed=0) -> AttackEnv:
    """An environment whose fit set is the forget items (the model plays the original: no fictional calibration)."""
    by_id = {it.id: it for it in items}
    forget = tuple(it.id for it in items if it.split == "forget")
    return AttackEnv(model, None, fit_ids=forget, items=by_id, seed=seed)


# -- relearn_unrelated ------------------------------------------------------------------------------------------------
def test_zero_steps_is_an_exact_no_op(model, synthetic_items):
    before = weights(model)
    env = split_env(model, synthetic_items)
    for attack in (RelearnUnrelated(steps=0), RelearnSplit(steps=0)):
        groups = attack.resolve(model).treat_groups(model, synthetic_items, [None] * len(synthetic_items), env)
        for _, treatment in groups:
            assert treatment.model is not model and same_weights(weights(treatment.model), before)
        assert (env.details[(attack.label, "training")]["delta_norm"] == 0).all()
    assert same_weights(weights(model), before)


def test_one_step_lowers_the_nll_of_its_training_items_and_leaves_the_input_alone(model):
    attack = RelearnUnrelated(steps=1).resolve(model)  # the default lr 1e-5
    env = AttackEnv(model, seed=0)
    items = attack.training_items(env.seed)
    before, nll_before = weights(model), gold_nll(model, items)
    copy = attack.transform(model, env)
    changed = [k for k, v in weights(copy).items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every tensor moved (AdamW's first step is lr·sign(g) wherever g ≠ 0)
    nll_after = gold_nll(copy, items)
    assert nll_after < nll_before - 1e-3
    assert same_weights(weights(model), before) and gold_nll(model, items) == nll_before
    row = env.details[(attack.label, "training")].iloc[0]
    assert row["n_train"] == 10 and row["steps"] == 1 and row["train_ids"] == " | ".join(it.id for it in items)
    assert row["initial_loss"] == pytest.approx(nll_before, rel=1e-6)
    assert row["final_loss"] == pytest.approx(nll_after, rel=1e-6)
    delta = sum(float((weights(copy)[k].double() - before[k].double()).pow(2).sum()) for k in before) ** 0.5
    assert row["delta_norm"] == pytest.approx(delta, rel=1e-6) and delta > 0  # ‖Δw‖ (the tiny model ties nothing)


def test_relearning_is_deterministic_for_a_seed(model):
    attack = RelearnUnrelated(steps=2, lr=1e-4)
    first = weights(attack.transform(model, AttackEnv(model, seed=3)))
    again = weights(attack.transform(model, AttackEnv(model, seed=3)))
    assert same_weights(first, again)
    other = weights(attack.transform(model, AttackEnv(model, seed=4)))  # other items drawn
    assert not same_weights(first, other)


def test_training_items_are_drawn_with_the_seed():
    attack = RelearnUnrelated(n_items=5)
    a, b = attack.training_items(0), attack.training_items(0)
    assert [it.id for it in a] == [it.id for it in b] and len(a) == 5 and len({it.id for it in a}) == 5
    assert {it.id for it in a} <= {it.id for it in load_items("builtin:unrelated_qa")}
    assert [it.id for it in a] != [it.id for it in attack.training_items(1)]


def test_labels_and_spec_values():
    assert [a.name for a in RELEARN_ATTACKS] == ["relearn_unrelated", "relearn_split"]
    assert all(a.family == "relearning" and a.kind == "transform" and not a.uses_keywords for a in RELEARN_ATTACKS)
    assert all(a.control() is None and a.runs_on_original for a in RELEARN_ATTACKS)
    assert RelearnUnrelated().label == "relearn_unrelated[k5]" and RelearnSplit(steps=1).label == "relearn_split[k1]"
    assert [RelearnUnrelated(steps=k).label for k in (1, 5, 10)] == [f"relearn_unrelated[k{k}]" for k in (1, 5, 10)]
    assert RelearnUnrelated(lr=3e-5, n_items=4, data="x/mine.jsonl").label == "relearn_unrelated[k5,lr3e-05,n4,mine]"
    attack = RelearnUnrelated()
    # a spec string's values parse by the default's type (relearn_unrelated:steps=1,lr=1e-4,data=...)
    assert _convert(attack, "steps", "1") == 1 and _convert(attack, "lr", "1e-4") == 1e-4
    assert _convert(attack, "data", "f.jsonl") == "f.jsonl" and _convert(attack, "n_items", "3") == 3
    assert attack.configure(steps=1).steps == 1
    with pytest.raises(InputError, match="unknown option 'layers'"):
        attack.configure(layers=1)


@pytest.mark.parametrize(
    "attack, message",
    [
        (RelearnUnrelated(steps=-1), "steps must be an integer >= 0, got -1"),
        (RelearnUnrelated(steps=1.5), "steps must be an integer >= 0, got 1.5"),
        (RelearnUnrelated(lr=0.0), "lr must be a finite number > 0, got 0.0"),
        (RelearnUnrelated(lr=-1e-5), "lr must be a finite number > 0"),
        (RelearnUnrelated(n_items=0), "n_items must be an integer >= 1, got 0"),
        (RelearnUnrelated(n_items=34), "n_items=34 but the built-in unrelated_qa.jsonl has only 33 items"),
        (RelearnUnrelated(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (RelearnUnrelated(data="/no/such/file.jsonl"), "data=/no/such/file.jsonl: data file .* does not exist"),
        (RelearnSplit(steps=-2), "relearn_split: steps must be an integer >= 0, got -2"),
        (RelearnSplit(lr=float("nan")), "relearn_split: lr must be a finite number > 0"),
    ],
)
def test_bad_options_are_one_line_input_errors(original, attack, message):
    with pytest.raises(InputError, match=message) as err:
        attack.resolve(original)
    assert "\n" not in str(err.value)


def test_a_user_file_is_validated_and_used(original, tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text("\n".join(json.dumps({"id": f"m{i}", "question": f"Q{i}?", "answer": f"a{i}"}) for i in range(3)))
    attack = RelearnUnrelated(data=str(good), n_items=3).resolve(original)
    assert sorted(it.id for it in attack.training_items(0)) == ["m0", "m1", "m2"]
    with pytest.raises(InputError, match="n_items=4 but data=.*mine.jsonl has only 3 items"):
        attack.configure(n_items=4).resolve(original)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "Q?"}))
    with pytest.raises(InputError, match=r"relearn_unrelated: data=.*bad.jsonl: .*missing field 'answer'") as err:
        RelearnUnrelated(data=str(bad)).resolve(original)
    assert "\n" not in str(err.value)


# -- the built-in data ------------------------------------------------------------------------------------------------
def builtin_sets():
    return {"real_facts": load_items("builtin:real_facts"), "synthetic_facts": load_items("builtin:synthetic_facts")}


def answers(item) -> tuple[str, ...]:
    return (item.answer, *item.aliases)


def overlaps(a, b) -> bool:
    """Whether either item's answer (or an alias) contains the other's, as the ``contains`` judge reads text
    (whole tokens, case-insensitive), or the two ask the same question."""
    same_question = normalize_tokens(a.question) == normalize_tokens(b.question)
    a_in_b = any(contains_answer(text, a.answer, a.aliases) for text in answers(b))
    b_in_a = any(contains_answer(text, b.answer, b.aliases) for text in answers(a))
    return same_question or a_in_b or b_in_a


def test_unrelated_items_are_disjoint_from_every_builtin_item():
    unrelated = load_items("builtin:unrelated_qa")
    assert 30 <= len(unrelated) <= 40 and len({it.id for it in unrelated}) == len(unrelated)
    others = [it for items in builtin_sets().values() for it in items] + load_items("builtin:fictional_facts")
    hits = [(u.id, o.id) for u in unrelated for o in others if overlaps(u, o)]
    assert not hits
    # case-insensitively, by hand: an unrelated answer spelled in upper case still contains no built-in answer
    assert not any(contains_answer(u.answer.upper(), o.answer, o.aliases) for u in unrelated for o in others)
    assert overlaps(unrelated[0], unrelated[0])  # the check can fail


def test_fictional_facts_load_and_overlap_no_real_fact():
    fictional = load_items("builtin:fictional_facts")
    assert len(fictional) == 40 and all(it.split == "forget" and it.keywords for it in fictional)
    real = [it for items in builtin_sets().values() for it in items]
    assert not [(f.id, r.id) for f in fictional for r in real if overlaps(f, r)]
    # no fictional answer contains another: a copy taught one fold's answers cannot be credited on the other fold
    assert not [(a.id, b.id) for a in fictional for b in fictional if a.id != b.id and overlaps(a, b)]


# -- relearn_split ----------------------------------------------------------------------------------------------------
def test_seeded_folds_are_balanced_fixed_and_seeded():
    ids = [f"item-{i:02d}" for i in range(9)]
    folds = seeded_folds(ids, 2, 0)
    assert sorted(np.bincount(list(folds.values()))) == [4, 5]
    assert seeded_folds(list(reversed(ids)), 2, 0) == folds
    assert any(seeded_folds(ids, 2, s) != folds for s in (1, 2, 3))


def test_split_never_scores_an_item_with_a_copy_trained_on_it(model, synthetic_items):
    attack = RelearnSplit(steps=1)
    env = split_env(model, synthetic_items)
    forget = [it.id for it in synthetic_items if it.split == "forget"]
    groups = attack.treat_groups(model, synthetic_items, [None] * len(synthetic_items), env)
    copies = {id(attack.relearned(model, env, f).model): attack.relearned(model, env, f) for f in (0, 1)}
    scored: list[str] = []
    for idx, treatment in groups:
        relearned = copies[id(treatment.model)]
        ids = [synthetic_items[i].id for i in idx]
        assert relearned.train_ids and set(relearned.train_ids) <= set(forget)
        assert not set(ids) & set(relearned.train_ids)  # never scored by a copy that trained on it
        scored += ids
    assert sorted(scored) == sorted(it.id for it in synthetic_items)  # every item (every forget item) exactly once
    folds = attack.folds(env)
    trained = sorted(i for r in copies.values() for i in r.train_ids)
    assert trained == sorted(forget) and sorted(np.bincount([folds[i] for i in forget])) == [4, 4]
    outside = [it.id for it in synthetic_items if it.split != "forget"]
    assert all(attack.training_fold(i, env) == 0 for i in outside)  # retain/utility: the copy trained on fold 0
    # every copy trained once; one step lowered the NLL of its own training fold
    table = env.details[(attack.label, "training")]
    assert (
        len(table) == 2 and list(table["train_fold"]) == [0, 1] and (table["final_loss"] < table["initial_loss"]).all()
    )
    # another arm (a subset, reordered) meets the same folds and the same cached copies
    subset = list(reversed(synthetic_items[:10]))
    again = attack.treat_groups(model, subset, [None] * len(subset), env)
    for idx, treatment in again:
        relearned = copies[id(treatment.model)]
        assert not {subset[i].id for i in idx} & set(relearned.train_ids)
    assert len(env.details[(attack.label, "training")]) == 2


def test_relearn_split_on_a_model_without_fit_items_is_the_untrained_fold_0_copy(original, synthetic_items):
    env = AttackEnv(original, seed=0, items={it.id: it for it in synthetic_items})
    groups = RelearnSplit(steps=1).treat_groups(original, synthetic_items, [None] * len(synthetic_items), env)
    assert len(groups) == 1 and groups[0][0] == list(range(len(synthetic_items)))
    assert same_weights(weights(groups[0][1].model), weights(original))


# -- inside a recovery run --------------------------------------------------------------------------------------------
def test_both_conditions_in_a_recovery_run(original, ga_unlearned, synthetic_items):
    from unpact_mech.recovery import RecoveryConfig, run_recovery

    before = weights(ga_unlearned), weights(original)
    unrelated, split = RelearnUnrelated(steps=1), RelearnSplit(steps=1)
    result = run_recovery(
        original, ga_unlearned, synthetic_items,
        RecoveryConfig(attacks=[unrelated, split], keyword_source="data"), progress=False,
    )  # fmt: skip
    assert same_weights(weights(ga_unlearned), before[0]) and same_weights(weights(original), before[1])
    rates = result.rates.set_index("condition")
    for label in ("relearn_unrelated[k1]", "relearn_split[k1]"):
        row = rates.loc[label]
        assert row["family"] == "relearning" and row["kind"] == "transform"
        assert row["n_eligible"] == len(result.eligible_ids) > 0 and 0 <= row["recovery_rate"] <= 1
        assert not np.isnan(row["original_accuracy_after"])  # the same relearning applied to the original
        per = result.per_item[(result.per_item["condition"] == label) & (result.per_item["arm"] == "emphasis")]
        assert sorted(per["item_id"]) == sorted(result.eligible_ids)  # each eligible item scored exactly once
    # training tables: one copy per model for relearn_unrelated, two (one per fold) for relearn_split
    unrel = result.details[("relearn_unrelated[k1]", "training")]
    assert sorted(unrel["model"]) == ["original", "unlearned"] and (unrel["delta_norm"] > 0).all()
    table = result.details[("relearn_split[k1]", "training")]
    assert sorted(zip(table["model"], table["train_fold"])) == [
        ("original", 0), ("original", 1), ("unlearned", 0), ("unlearned", 1),
    ]  # fmt: skip
    forget = sorted(it.id for it in synthetic_items if it.split == "forget")
    for _, part in table.groupby("model"):
        assert sorted(i for ids in part["train_ids"] for i in ids.split(" | ")) == forget
    # the fictional-facts calibration, once per run, on the unlearned model, with its exact interval
    fictional = result.details[("relearn_split[k1]", "fictional_control")]
    assert len(fictional) == 1 and fictional.iloc[0]["model"] == "unlearned" and fictional.iloc[0]["n"] == 40
    expected = rate(np.arange(40) < fictional.iloc[0]["recovered"])
    assert fictional.iloc[0]["accuracy"] == expected.value == 0.0  # the tiny model cannot learn a fold from another
    assert (fictional.iloc[0]["ci_low"], fictional.iloc[0]["ci_high"]) == pytest.approx((expected.low, expected.high))


def test_the_training_objective_recipe_equals_the_conditions_defaults():
    from unpact_mech.attacks import relearn as R
    from unpact_mech.unlearning.relearning import RelearnNLL

    recipe = RelearnNLL.recipe
    assert (recipe.lr, recipe.steps, recipe.batch_size) == (R.DEFAULT_LR, R.DEFAULT_STEPS, R.DEFAULT_BATCH_SIZE)
    assert "relearn" not in __import__("unpact_mech.unlearning", fromlist=["x"]).UNLEARNING_METHODS  # not offered
