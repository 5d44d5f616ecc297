"""``ablate_direction``: the projection and the directions by hand, cross-fitting by construction, exact no-ops,
every position edited (generated tokens too), the random control, both backends, options, and a recovery run with
``logit_lens`` beside it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from unpact_mech import load_model
from unpact_mech.attacks import AttackEnv, ItemKeywords
from unpact_mech.attacks.activation import fold_of
from unpact_mech.attacks.direction import (
    DIRECTION_ATTACKS,
    AblateDirection,
    project_out,
    random_directions,
    unit_rows,
)
from unpact_mech.attacks.latent import LogitLens
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import Intervention
from unpact_mech.scoring.batching import left_pad, right_pad_teacher_forced
from unpact_mech.scoring.tokens import encode_item

HOOK = "blocks.0.hook_resid_post"


def _env(original, unlearned, items, fit, seed=0, encoded=None):
    encoded = encoded or {it.id: encode_item(original, it) for it in items}
    return AttackEnv(
        original, unlearned, encoded, {}, tuple(it.id for it in fit), batch_size=4, items={it.id: it for it in items},
        seed=seed,
    )  # fmt: skip


def _forget(items, n=6):
    return [it for it in items if it.split == "forget"][:n]


def _tf(model, encoded):
    prompts = [e.prompt.ids for e in encoded]
    return right_pad_teacher_forced(
        prompts, [e.answer_ids for e in encoded], model.pad_token_id, list(range(len(encoded)))
    )


def _logits(model, batch, factory=None, cache=()):
    ivs = factory(batch.layout) if factory else []
    with torch.no_grad():
        return model.forward(batch.input_ids, interventions=ivs, cache=list(cache))


def test_projection_and_unit_rows_by_hand():
    h = torch.tensor([[3.0, 4.0]])
    assert torch.equal(project_out(h, torch.tensor([1.0, 0.0])), torch.tensor([[0.0, 4.0]]))
    assert torch.equal(project_out(h, torch.tensor([1.0, 0.0]), 0.5), torch.tensor([[1.5, 4.0]]))
    assert torch.allclose(project_out(h, torch.tensor([0.6, 0.8])), torch.zeros(1, 2), atol=1e-6)  # h = 5 u
    assert torch.equal(project_out(h, torch.zeros(2)), h)
    assert torch.equal(unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]])), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    like = {0: torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]]), 3: torch.tensor([[1.0, 0.0, 0.0]])}
    rnd = random_directions(like, seed=7)
    assert torch.allclose(rnd[0].norm(dim=-1), torch.tensor([1.0, 0.0])) and torch.equal(rnd[0][1], torch.zeros(3))
    assert torch.allclose(rnd[3].norm(dim=-1), torch.ones(1), atol=1e-6)
    assert torch.equal(random_directions(like, seed=7)[0], rnd[0])  # seeded
    assert not torch.allclose(random_directions(like, seed=8)[0][0], rnd[0][0])
    assert not torch.allclose(rnd[0][0], rnd[3][0])  # one draw per layer
    expect = np.random.default_rng([7, 3]).standard_normal(3)
    assert torch.allclose(rnd[3][0].double(), torch.from_numpy(expect / np.linalg.norm(expect)), atol=1e-6)


def test_direction_is_the_normalised_mean_difference(original, ga_unlearned, synthetic_items):
    fit = _forget(synthetic_items, 3)
    env = _env(original, ga_unlearned, synthetic_items, fit)
    attack = AblateDirection(layers=(0,), folds=3).resolve(ga_unlearned)
    folds, directions = attack.fold_directions(env)
    diffs = []
    with torch.no_grad():
        for it in fit:
            ids = torch.tensor([env.encoded[it.id].prompt.ids])
            diffs.append(
                ga_unlearned.forward(ids, cache=[HOOK]).cache[HOOK][0]
                - original.forward(ids, cache=[HOOK]).cache[HOOK][0]
            )
    every = torch.cat(diffs).mean(0)  # mean over items and ALL their prompt positions
    assert torch.allclose(directions[0][-1], every / every.norm(), atol=1e-5)
    for it in fit:  # three folds of one item each: fold f is fitted on the other two items
        others = torch.cat([d for o, d in zip(fit, diffs) if o.id != it.id]).mean(0)
        assert torch.allclose(directions[0][folds[it.id]], others / others.norm(), atol=1e-5)


def test_cross_fitting_by_construction(original, ga_unlearned, synthetic_items):
    """Changing one fit item's residuals (its prompt) changes every direction EXCEPT its own fold's: the item never
    contributes to the direction that ablates it."""
    fit = _forget(synthetic_items)
    outside = next(it for it in synthetic_items if it.split == "utility")
    attack = AblateDirection(layers=(0, 1), folds=3).resolve(ga_unlearned)
    env = _env(original, ga_unlearned, synthetic_items, fit)
    ids = [it.id for it in fit] + [outside.id]
    before = attack.item_directions(env, ids)
    changed = fit[2]
    encoded = dict(env.encoded)
    encoded[changed.id] = encode_item(original, changed, question="What is the animal of Quenara and Zorblat?")
    after = attack.item_directions(_env(original, ga_unlearned, synthetic_items, fit, encoded=encoded), ids)
    folds = fold_of([it.id for it in fit], 3)
    assert folds == attack.fold_directions(env)[0]
    for L in (0, 1):
        for row, item_id in enumerate(ids):
            same = torch.allclose(before[L][row], after[L][row], atol=1e-6)
            assert same == (item_id != outside.id and folds[item_id] == folds[changed.id]), (L, item_id)
        assert torch.allclose(before[L].norm(dim=-1), torch.ones(len(ids)), atol=1e-5)
    # rows: an item of fold f gets direction f; the item outside the fit set gets the all-items direction
    directions = attack.fold_directions(env)[1]
    assert torch.equal(before[0][0], directions[0][folds[fit[0].id]]) and torch.equal(before[0][-1], directions[0][3])


def test_ablation_by_hand_at_every_position(original, ga_unlearned, synthetic_items):
    fit = _forget(synthetic_items)
    items = fit[:3] + [it for it in synthetic_items if it.split == "retain"][:2]
    env = _env(original, ga_unlearned, synthetic_items, fit)
    attack = AblateDirection(layers=(0,)).resolve(ga_unlearned)
    ids = [it.id for it in items]
    u = attack.item_directions(env, ids)[0]
    assert (u[0] - u[3]).norm() > 1e-3  # fold directions differ: the batch row -> item mapping matters
    order = [4, 2, 0, 3, 1]  # a batch holding the evaluated items in another order (as length batching does)
    enc = [env.encoded[ids[i]] for i in order]
    batch = right_pad_teacher_forced(
        [e.prompt.ids for e in enc], [e.answer_ids for e in enc], ga_unlearned.pad_token_id, order
    )
    plain = _logits(ga_unlearned, batch, cache=[HOOK]).cache[HOOK]
    out = _logits(ga_unlearned, batch, attack.interventions([[]] * len(ids), env, ids), cache=[HOOK]).cache[HOOK]
    u = u[order]  # batch row b holds item order[b]
    expected = plain - (plain * u[:, None]).sum(-1, keepdim=True) * u[:, None]  # every position, answer ones too
    assert torch.allclose(out, expected, atol=1e-5)
    assert (out * u[:, None]).sum(-1).abs().max() < 1e-4 < (plain * u[:, None]).sum(-1).abs().max()


def test_the_ablation_acts_on_generated_tokens(original, ga_unlearned, synthetic_items):
    fit = _forget(synthetic_items)
    env = _env(original, ga_unlearned, synthetic_items, fit)
    attack = AblateDirection(layers=(0,)).resolve(ga_unlearned)
    ids = [it.id for it in fit[:4]]
    u = attack.item_directions(env, ids)[0]
    batch = left_pad([env.encoded[i].prompt.ids for i in ids], ga_unlearned.pad_token_id, list(range(len(ids))))
    seen: list[torch.Tensor] = []
    record = Intervention(HOOK, lambda act, ctx: seen.append(act.clone()) or None, "record")
    ivs = [*attack.interventions([[]] * len(ids), env, ids)(batch.layout), record]  # record AFTER the ablation
    ga_unlearned.generate(batch.input_ids, batch.attention_mask, max_new_tokens=5, interventions=ivs)
    steps = [a for a in seen if a.shape[1] == 1]  # KV-cached decoding steps: one new token each
    assert len(steps) >= 2
    for act in steps:
        assert (act[:, 0] * u).sum(-1).abs().max() < 1e-4  # the generated token's residual has no u-component
    seen.clear()
    ga_unlearned.generate(batch.input_ids, batch.attention_mask, max_new_tokens=5, interventions=[record])
    assert max(float((a[:, -1] * u).sum(-1).abs().max()) for a in seen if a.shape[1] == 1) > 1e-2


def test_zero_directions_are_exact_noops(original, ga_unlearned, synthetic_items):
    fit = _forget(synthetic_items)
    ids = [it.id for it in fit[:4]]
    same = _env(original, original, synthetic_items, fit)  # original == unlearned: every direction is 0
    attack = AblateDirection(layers=(0, 1)).resolve(original)
    assert all(torch.equal(d, torch.zeros_like(d)) for d in attack.fold_directions(same)[1].values())
    batch = _tf(original, [same.encoded[i] for i in ids])
    factory = attack.interventions([[]] * len(ids), same, ids)
    assert len(factory(batch.layout)) == 2  # the edits run, and change nothing
    assert torch.equal(_logits(original, batch, factory).logits, _logits(original, batch).logits)
    prompts = left_pad([same.encoded[i].prompt.ids for i in ids], original.pad_token_id, list(range(len(ids))))
    assert torch.equal(
        original.generate(
            prompts.input_ids, prompts.attention_mask, max_new_tokens=4, interventions=factory(prompts.layout)
        ),
        original.generate(prompts.input_ids, prompts.attention_mask, max_new_tokens=4),
    )
    env = _env(original, ga_unlearned, synthetic_items, fit)
    zero = AblateDirection(layers=(0, 1), scale=0.0).resolve(ga_unlearned)
    assert zero.is_noop and zero.interventions([[]] * len(ids), env, ids)(batch.layout) == []
    treated = zero.treat(ga_unlearned, fit[:4], [ItemKeywords(i, (), (), "none") for i in ids], env)
    assert torch.equal(_logits(ga_unlearned, batch, treated.interventions).logits, _logits(ga_unlearned, batch).logits)


def test_random_control_is_matched(original, ga_unlearned, synthetic_items):
    fit = _forget(synthetic_items)
    attack = AblateDirection().resolve(ga_unlearned)
    control = attack.control()
    assert attack.label == "ablate_direction[0]" and control.label == "ablate_direction[0]random"
    assert dataclasses.replace(control, random=False) == attack and control.control() is None
    assert AblateDirection(scale=0.5, layers=(0, 1)).label == "ablate_direction[0,1]x0.5"
    ids = [it.id for it in fit] + [next(it.id for it in synthetic_items if it.split == "utility")]
    env = _env(original, ga_unlearned, synthetic_items, fit, seed=3)
    fitted, rnd = attack.item_directions(env, ids)[0], control.item_directions(env, ids)[0]
    assert torch.allclose(rnd.norm(dim=-1), fitted.norm(dim=-1), atol=1e-5)
    assert (fitted - rnd).norm(dim=-1).min() > 0.5
    other_seed = _env(original, ga_unlearned, synthetic_items, fit, seed=4)
    assert not torch.allclose(control.item_directions(other_seed, ids)[0], rnd)
    batch = _tf(ga_unlearned, [env.encoded[i] for i in ids])
    plain = _logits(ga_unlearned, batch).logits
    for a in (attack, control):
        assert (
            _logits(ga_unlearned, batch, a.interventions([[]] * len(ids), env, ids)).logits - plain
        ).abs().max() > 1e-3


def test_backends_agree(ga_unlearned_dir, synthetic_items):
    fit = _forget(synthetic_items)
    ids = [it.id for it in fit[:5]]
    out = {}
    for backend in ("transformer_lens", "nnsight"):
        original, unlearned = load_model("tiny", backend=backend), load_model(ga_unlearned_dir, backend=backend)
        env = _env(original, unlearned, synthetic_items, fit)
        batch = _tf(unlearned, [env.encoded[i] for i in ids])
        for hook in ("hook_resid_post", "hook_resid_pre"):
            attack = AblateDirection(hook=hook, layers=(0, 1)).resolve(unlearned)
            out[backend, hook] = _logits(unlearned, batch, attack.interventions([[]] * len(ids), env, ids)).logits
        plain = _logits(unlearned, batch).logits
        assert (out[backend, "hook_resid_post"] - plain).abs().max() > 1e-3
    for hook in ("hook_resid_post", "hook_resid_pre"):
        assert (out["transformer_lens", hook] - out["nnsight", hook]).abs().max() <= 1e-4, hook


@pytest.mark.parametrize(
    "options, message",
    [
        ({"layers": (0, 2)}, "ablate_direction: layer 2 out of range"),
        ({"folds": 1}, "folds must be an integer >= 2, got 1"),
        ({"hook": "attn.hook_z"}, "hook must be one of"),
        ({"scale": float("nan")}, "scale must be a finite number"),
    ],
)
def test_bad_options(options, message, original):
    with pytest.raises(InputError, match=message):
        AblateDirection().configure(**options).resolve(original)


def test_recovery_run_with_both_conditions(original, ga_unlearned, synthetic_items):
    from unpact_mech.recovery import RecoveryConfig, run_recovery

    assert DIRECTION_ATTACKS[0].name == "ablate_direction" and not DIRECTION_ATTACKS[0].uses_keywords
    cfg = RecoveryConfig(attacks=[LogitLens(), AblateDirection()], keyword_source="data", max_control_items=6)
    result = run_recovery(original, ga_unlearned, synthetic_items, cfg, progress=False)
    rates = result.rates.set_index("condition")
    assert list(rates.index) == ["logit_lens", "ablate_direction[0]"]
    assert list(rates["family"]) == ["latent_readout", "direction_ablation"]
    assert rates.loc["logit_lens", "n_eligible"] > 0 and np.isnan(rates.loc["logit_lens", "p_vs_random"])
    assert 0.0 <= rates.loc["ablate_direction[0]", "p_vs_random"] <= 1.0
    per = result.per_item
    arms = per[per.condition == "ablate_direction[0]"].groupby("arm")["emphasis"].first()
    assert arms["random_control"] == "ablate_direction[0]random"
    assert set(arms.index) == {"emphasis", "forget_rest", "random_control", "original_control", "general_control"}
    lens = per[(per.condition == "logit_lens") & (per.arm == "emphasis")]
    assert set(lens.item_id) == set(result.eligible_ids) and lens["best_layer"].notna().all()
    assert rates.loc["logit_lens", "recovery_rate"] == pytest.approx(lens["correct"].mean())
    per_layer = result.details[("logit_lens", "per_layer")]
    assert set(per_layer["role"]) == {"original", "unlearned"}
    curve = result.details[("logit_lens", "depth_curve")]
    assert (curve["n"] == len(result.eligible_ids)).all() and len(curve) == 2 + 2 * (original.shape.n_layers + 1)
