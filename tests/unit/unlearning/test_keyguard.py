"""keyguard on the tiny model: it unlearns, each extra term is live, all extra weights 0 = RMU exactly, the attack
rows are what the recovery suite would show, the activation attack is the registry's patch below the late layer,
determinism by seed."""

from __future__ import annotations

import pytest
import torch

from tests.unit.unlearning.conftest import TINY_RUNS, assert_same_weights, mean_logprob, weights
from unpact_mech import load_model
from unpact_mech.models.hooks import hook_name
from unpact_mech.unlearning import get_unlearning_method, unlearn
from unpact_mech.unlearning.adversarial import source
from unpact_mech.unlearning.batches import UnlearningSet
from unpact_mech.unlearning.methods.keyguard import INGREDIENTS, TRAIN_PROMPTS

ZERO = dict.fromkeys(INGREDIENTS, 0.0)


def run(model, items, hyperparameters=None, method="keyguard", **kw):
    opts = {**TINY_RUNS[method], **kw}
    hp = {**opts.pop("hyperparameters"), **(hyperparameters or {})}
    return unlearn(model, items, method, hyperparameters=hp, evaluate=False, progress=False, **opts)


def test_all_extra_weights_zero_is_rmu_numerically(synthetic_items):
    rmu_model, kg_model = load_model("tiny"), load_model("tiny")
    rmu = run(rmu_model, synthetic_items, {"layer": 0}, method="rmu")
    kg = run(kg_model, synthetic_items, ZERO)
    assert_same_weights(weights(rmu_model), weights(kg_model))
    assert rmu.loss_table().drop(columns="seconds").equals(kg.loss_table().drop(columns="seconds"))


@pytest.mark.parametrize("ingredient", INGREDIENTS)
def test_each_ingredient_alone_changes_the_training(ingredient, synthetic_items):
    """Every term is live: switching ONE weight on (the others 0) moves the weights away from RMU's."""
    base, one = load_model("tiny"), load_model("tiny")
    run(base, synthetic_items, ZERO)
    run(one, synthetic_items, ZERO | {ingredient: 1.0})
    a, b = weights(base), weights(one)
    assert any(not torch.equal(a[n], b[n]) for n in a)


def test_keyguard_lowers_forget_logprob_more_than_it_touches_retain(model, synthetic_items):
    f0, r0 = mean_logprob(model, synthetic_items, "forget"), mean_logprob(model, synthetic_items, "retain")
    result = run(model, synthetic_items)
    f1, r1 = mean_logprob(model, synthetic_items, "forget"), mean_logprob(model, synthetic_items, "retain")
    assert f1 < f0 - 1.0, (f0, f1)
    assert f0 - f1 > r0 - r1, (f0, f1, r0, r1)
    assert result.summary["method"] == "keyguard" and model.lineage[-1]["method"] == "keyguard"


def test_same_seed_same_weights_other_seed_other_weights(synthetic_items):
    a, b, c = load_model("tiny"), load_model("tiny"), load_model("tiny")
    run(a, synthetic_items, seed=3)
    run(b, synthetic_items, seed=3)
    run(c, synthetic_items, seed=4)
    assert_same_weights(weights(a), weights(b))
    wa, wc = weights(a), weights(c)
    assert any(not torch.equal(wa[n], wc[n]) for n in wa)


def _prepared(model, items, **hp):
    method = get_unlearning_method("keyguard", **(TINY_RUNS["keyguard"]["hyperparameters"] | hp))
    data = UnlearningSet.from_items(model, items)
    method.setup(model, data, seed=0)
    return method, data


def test_attack_rows_are_the_rewritten_forget_and_retain_items(model, synthetic_items):
    method, data = _prepared(model, synthetic_items)
    pool = method.pool
    n_f, n_r, n_s = len(data.forget), len(data.retain), len(TRAIN_PROMPTS)
    assert [len(pool.rows[k]) for k in ("prompt", "activation", "retain_prompt")] == [n_f * n_s, n_f, n_r * n_s]
    tok = model.tokenizer
    first = data.forget_items[0]
    texts = [tok.decode(list(t.prompt.ids)) for t in pool.rows["prompt"][:n_s]]
    assert any("Focus on the key words:" in t for t in texts)
    assert all(first.question.split()[-1].rstrip("?").lower() in t.lower() for t in texts)
    # the answer the loss sees is unchanged, only the prompt is rewritten
    assert all(
        t.answer_ids == data.forget[0].answer_ids and t.context_ids == data.forget[0].context_ids
        for t in pool.rows["prompt"][:n_s]
    )
    assert {t.source for t in pool.rows["retain_prompt"]} == {source("retain_prompt")}
    # a batch draws batch_size rows of each kind, deterministically
    rows = method.extra_targets(0, 5, 4)
    assert [t.source for t in rows] == [source("prompt")] * 4 + [source("activation")] * 4 + [
        source("retain_prompt")
    ] * 4
    assert rows == method.extra_targets(0, 5, 4) and rows != method.extra_targets(0, 6, 4)
    method.teardown()


def test_zero_weights_draw_no_rows_and_no_interventions(model, synthetic_items):
    method, data = _prepared(model, synthetic_items, **ZERO)
    assert method.pool is None and method.extra_targets(0, 0, 4) == ()
    method.teardown()


def test_activation_attack_patches_the_original_at_keyword_positions_below_layer(model, synthetic_items):
    """Under the attack, an activation row's layer-0 residual at its KeyToken positions equals the frozen original's,
    while its other positions and the plain forget rows keep the policy's own values."""
    from unpact_mech.unlearning.batches import make_batch

    method, data = _prepared(model, synthetic_items, prompt_attacks=0.0, retain_attacks=0.0)
    with torch.no_grad():  # make the policy differ from the frozen original
        for p in model.hf.model.layers[0].mlp.parameters():
            p.add_(0.05)
    extra = method.extra_targets(0, 0, 2)
    batch = make_batch(data, [0, 1], [], model.pad_token_id, extra)
    hook = hook_name(0, "hook_resid_post")
    ivs = method.interventions(model, batch)
    assert [iv.hook for iv in ivs] == [hook]  # layers 0..l'-1 with the late layer l' = 1
    with torch.no_grad():
        patched = model.forward(batch.tf.input_ids, interventions=ivs, cache=[hook]).cache[hook]
        plain = model.forward(batch.tf.input_ids, cache=[hook]).cache[hook]
        ref = method.reference.forward(batch.tf.input_ids, cache=[hook]).cache[hook]
    for j, target in enumerate(extra):
        row = batch.extra_rows.start + j
        pos = list(method.pool.keyword_positions[target.item_id])
        assert pos, "every synthetic item has KeyTokens"
        assert torch.allclose(patched[row, pos], ref[row, pos])
        assert not torch.allclose(plain[row, pos], ref[row, pos])
        other = [t for t in range(len(target.prompt)) if t not in pos]
        assert torch.equal(patched[row, other], plain[row, other])
    assert torch.equal(patched[:2], plain[:2])
    method.teardown()


def test_bad_weights_are_rejected():
    from unpact_mech.errors import InputError

    with pytest.raises(InputError, match="prompt_attacks must be >= 0"):
        get_unlearning_method("keyguard", prompt_attacks=-1.0)


def test_late_layer_trains_its_mlp_and_is_checked(model):
    m = get_unlearning_method("keyguard", layer=0, late_layer=-1)
    assert m.default_trainable(model) == r"^model\.layers\.(0|1)\.mlp\.down_proj\.weight$"
    assert get_unlearning_method("keyguard", layer=0, late_weight=0.0).default_trainable(
        model
    ) == get_unlearning_method("rmu", layer=0).default_trainable(model)
    from unpact_mech.errors import InputError

    with pytest.raises(InputError, match="late_layer"):
        get_unlearning_method("keyguard", layer=1, late_layer=1).check_model(model)
    with pytest.raises(InputError, match="integer"):
        get_unlearning_method("keyguard", late_layer=1.5)
