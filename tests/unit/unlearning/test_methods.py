"""Every method on the tiny model: it unlearns, regularisers protect retain, RMU/regex train only what they select,
task vectors are exact weight arithmetic, runs are deterministic by seed."""

from __future__ import annotations

import pytest
import torch

from tests.unit.unlearning.conftest import TINY_RUNS, assert_same_weights, mean_logprob, weights
from unpact_mech.unlearning import UNLEARNING_METHODS, get_unlearning_method, unlearn
from unpact_mech.unlearning import task_vector as tv


def run(model, items, method, **kw):
    opts = {**TINY_RUNS[method], **kw}
    return unlearn(model, items, method, evaluate=False, progress=False, **opts)


def test_registry_has_the_ten_methods_and_the_keyguard_variants():
    assert list(UNLEARNING_METHODS) == [
        "ga",
        "ga_gdr",
        "ga_klr",
        "npo",
        "npo_gdr",
        "npo_klr",
        "simnpo",
        "rmu",
        "task_vector",
        "keyguard",
        "keyguard_late_answer",
        "keyguard_steer",
        "keyguard_smooth",
        "keyguard_quant",
        "keyguard2",
        "keyguard_grid",
    ]
    assert set(TINY_RUNS) == set(UNLEARNING_METHODS)


@pytest.mark.parametrize("method", list(TINY_RUNS))
def test_every_method_lowers_the_forget_answer_logprob(method, model, synthetic_items):
    before = mean_logprob(model, synthetic_items, "forget")
    result = run(model, synthetic_items, method)
    after = mean_logprob(model, synthetic_items, "forget")
    assert after < before - 0.5, (before, after)
    assert result.summary["weight_delta_norm"] > 0
    assert model.lineage[-1]["role"] == "unlearned" and model.lineage[-1]["method"] == method


@pytest.mark.parametrize("pair", [("ga", "ga_gdr"), ("ga", "ga_klr"), ("npo", "npo_gdr"), ("npo", "npo_klr")])
def test_retain_regularised_variants_keep_retain_logprob_higher(pair, synthetic_items):
    from unpact_mech import load_model

    plain, regularised = pair
    retain = {}
    for method in pair:
        model = load_model("tiny")
        run(model, synthetic_items, method, steps=5, lr=1e-3, seed=0)
        retain[method] = mean_logprob(model, synthetic_items, "retain")
    assert retain[regularised] > retain[plain] + 0.1, retain
    # and every regularised variant beats plain GA too
    if plain == "npo":
        model = load_model("tiny")
        run(model, synthetic_items, "ga", steps=5, lr=1e-3, seed=0)
        assert retain[regularised] > mean_logprob(model, synthetic_items, "retain")


def test_rmu_changes_only_the_selected_mlp_weights(model, synthetic_items):
    before = weights(model)
    result = run(model, synthetic_items, "rmu")
    after = weights(model)
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert result.summary["n_trainable_tensors"] == 2
    assert all(p.requires_grad for p in model.parameters())  # flags restored after training


def test_rmu_default_trains_layers_l_minus_2_to_l(model):
    m = get_unlearning_method("rmu", layer=1)
    assert m.default_trainable(model) == r"^model\.layers\.(0|1)\.mlp\.down_proj\.weight$"
    m = get_unlearning_method("rmu", layer=7)
    assert "(5|6|7)" in m.default_trainable(model)


def test_trainable_regex_limits_any_method(model, synthetic_items):
    before = weights(model)
    run(model, synthetic_items, "ga", trainable=r"^model\.layers\.1\.self_attn\.")
    after = weights(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("model.layers.1.self_attn.") for n in changed)
    assert "lm_head.weight" not in changed


def test_task_vector_arithmetic_is_exact():
    g = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g)}
    ft = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    s = 0.7
    out = tv.negate(base, ft, s)
    for k in base:
        exact = base[k].double() - s * (ft[k].double() - base[k].double())
        assert torch.allclose(out[k].double(), exact, rtol=0, atol=1e-6)
        assert torch.equal(out[k], base[k] - s * (ft[k] - base[k]))
    assert torch.equal(tv.add(base, tv.task_vector(base, ft), 1.0)["a"], base["a"] + (ft["a"] - base["a"]))
    with pytest.raises(KeyError):
        tv.task_vector(base, {"a": ft["a"]})


def test_task_vector_method_writes_theta_minus_s_tau(model, synthetic_items):
    base = weights(model)
    finetuned = {}

    def capture(step):  # after the last optimizer step, before the arithmetic
        if step == TINY_RUNS["task_vector"]["steps"]:
            finetuned.update(weights(model))

    s = 1.5
    run(model, synthetic_items, "task_vector", hyperparameters={"scale": s}, callback=capture)
    final = weights(model)
    assert any(not torch.equal(finetuned[n], base[n]) for n in base)
    for n in base:
        assert torch.allclose(
            final[n].double(), base[n].double() - s * (finetuned[n].double() - base[n].double()), rtol=0, atol=1e-6
        ), n


def test_same_seed_same_weights_other_seed_other_weights(synthetic_items):
    from unpact_mech import load_model

    runs = {}
    for label, seed in (("a", 3), ("b", 3), ("c", 4)):
        model = load_model("tiny")
        run(model, synthetic_items, "npo_gdr", seed=seed, batch_size=2, grad_accum=2)
        runs[label] = weights(model)
    assert_same_weights(runs["a"], runs["b"])
    assert any(not torch.equal(runs["a"][n], runs["c"][n]) for n in runs["a"])


def test_methods_reject_hyperparameters_they_do_not_take():
    from unpact_mech import InputError

    with pytest.raises(InputError, match="beta do not apply"):
        get_unlearning_method("ga", beta=0.1)
    with pytest.raises(InputError, match="beta must be > 0"):
        get_unlearning_method("npo", beta=0.0)
    with pytest.raises(InputError, match="layer must be a non-negative integer"):
        get_unlearning_method("rmu", layer=1.5)
    assert get_unlearning_method("npo_klr", beta=None).hp == {"beta": 0.1, "alpha": 1.0}
