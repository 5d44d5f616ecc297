"""Activation attacks at keyword positions: exact no-ops, exact patching, the edits by hand, generation, backend
agreement, spec strings."""

from __future__ import annotations

import pytest
import torch

from unpact_mech import load_model
from unpact_mech.attacks import AttackEnv, get_attack
from unpact_mech.attacks.activation import steering_directions
from unpact_mech.attacks.edits import reweight_attention
from unpact_mech.errors import InputError
from unpact_mech.scoring.batching import left_pad, right_pad_teacher_forced
from unpact_mech.scoring.tokens import encode_item


def _batch(model, items, answers=True):
    enc = [encode_item(model, it) for it in items]
    prompts = [e.prompt.ids for e in enc]
    if answers:
        return enc, right_pad_teacher_forced(
            prompts, [e.answer_ids for e in enc], model.pad_token_id, list(range(len(enc)))
        )
    return enc, left_pad(prompts, model.pad_token_id, list(range(len(enc))))


def _attack(text, model):
    return get_attack(text, kind="intervention").resolve(model)


def _logits(model, batch, attack=None, positions=None, source=None, directions=None):
    env = AttackEnv(original=source, unlearned=model)
    if directions is not None and attack.name == "steer":  # one direction per layer given instead of fitted
        env.memo[("steer_directions", attack.label, attack.folds)] = ({}, {L: d[None] for L, d in directions.items()})
    ivs = attack.interventions(positions, env)(batch.layout) if attack else []
    with torch.no_grad():
        return model.forward(batch.input_ids, attention_mask=batch.layout.attention_mask, interventions=ivs).logits


def test_patching_every_position_of_every_layer_reproduces_the_original(original, blocks_perturbed, synthetic_items):
    enc, batch = _batch(original, synthetic_items[:6])
    everywhere = [list(range(batch.input_ids.shape[1]))] * 6  # prompt AND answer positions
    spec = _attack("patch", blocks_perturbed)
    assert spec.layers == tuple(range(original.shape.n_layers))
    ref = _logits(original, batch)
    patched = _logits(blocks_perturbed, batch, spec, everywhere, source=original)
    assert torch.equal(patched, ref)
    assert (_logits(blocks_perturbed, batch) - ref).abs().max() > 1e-2  # the perturbation mattered
    partial = _attack("patch:layers=0", blocks_perturbed)
    assert not torch.equal(_logits(blocks_perturbed, batch, partial, everywhere, source=original), ref)


@pytest.mark.parametrize("spec", ["scale:factor=1", "pasta:other_weight=1", "steer:coefficient=0", "patch"])
def test_noop_settings_are_exact(spec, original, blocks_perturbed, synthetic_items):
    enc, batch = _batch(original, synthetic_items[:5])
    positions = [e.prompt.positions_of(it.keywords[1]) for e, it in zip(enc, synthetic_items[:5])]
    spec = _attack(spec, blocks_perturbed)
    if spec.name == "patch":
        from dataclasses import replace

        spec = replace(spec, layers=())  # patching no layer
    directions = {L: torch.ones(blocks_perturbed.shape.d_model) for L in spec.layers}
    assert torch.equal(
        _logits(blocks_perturbed, batch, spec, positions, source=original, directions=directions),
        _logits(blocks_perturbed, batch),
    )


def test_empty_position_sets_are_exact_noops(blocks_perturbed, original, synthetic_items):
    enc, batch = _batch(original, synthetic_items[:4])
    base = _logits(blocks_perturbed, batch)
    empty = [[] for _ in enc]
    for spec in ("scale:factor=3", "pasta:other_weight=0.01", "patch"):
        s = _attack(spec, blocks_perturbed)
        assert torch.equal(_logits(blocks_perturbed, batch, s, empty, source=original), base), spec


def test_scale_and_pasta_by_hand(blocks_perturbed, synthetic_items):
    model = blocks_perturbed
    enc, batch = _batch(model, synthetic_items[:1])
    pos = [enc[0].prompt.positions_of("Zorblat")]
    name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        pre = model.forward(batch.input_ids, cache=[name]).cache[name]
        spec = _attack("scale:layers=0,factor=3", model)
        ivs = spec.interventions(pos, AttackEnv(original=model))(batch.layout)
        post = model.forward(batch.input_ids, interventions=ivs, cache=[name]).cache[name]
    expected = pre.clone()
    expected[0, pos[0]] *= 3.0
    assert torch.allclose(post, expected)
    # PASTA on a hand-made pattern: keys 1 and 3 emphasised, others x0.5, renormalised, head 1 untouched
    a = torch.tensor([[0.4, 0.1, 0.2, 0.3]]).expand(1, 2, 1, 4).clone()
    out = reweight_attention(a, torch.tensor([[False, True, False, True]]), 0.5, heads=[0])
    w = torch.tensor([0.2, 0.1, 0.1, 0.3])
    assert torch.allclose(out[0, 0, 0], w / w.sum()) and torch.equal(out[0, 1], a[0, 1])
    assert torch.allclose(out.sum(-1), torch.ones(1, 2, 1))


def test_interventions_are_active_during_generation(original, blocks_perturbed, synthetic_items):
    items = synthetic_items[:4]
    enc, batch = _batch(original, items, answers=False)
    prompt_positions = [list(range(len(e.prompt))) for e in enc]
    spec = _attack("patch", blocks_perturbed)
    ivs = spec.interventions(prompt_positions, AttackEnv(original=original))(batch.layout)
    plain = blocks_perturbed.generate(batch.input_ids, batch.attention_mask, max_new_tokens=4)
    patched = blocks_perturbed.generate(batch.input_ids, batch.attention_mask, max_new_tokens=4, interventions=ivs)
    target = original.generate(batch.input_ids, batch.attention_mask, max_new_tokens=4)
    assert torch.equal(patched[:, 0], target[:, 0])  # last prompt residual restored -> original's first token
    assert not torch.equal(patched, plain)
    scaled = _attack("scale:factor=50", blocks_perturbed).interventions(prompt_positions, AttackEnv(original))(
        batch.layout
    )
    assert not torch.equal(
        blocks_perturbed.generate(batch.input_ids, batch.attention_mask, max_new_tokens=4, interventions=scaled), plain
    )


def test_backends_agree_on_every_intervention(ga_unlearned_dir, synthetic_items):
    items = synthetic_items[:5]
    models = {b: load_model(ga_unlearned_dir, backend=b) for b in ("transformer_lens", "nnsight")}
    source = load_model("tiny", backend="nnsight")
    enc, batch = _batch(source, items)
    positions = [e.prompt.positions_of(it.keywords[1]) for e, it in zip(enc, items)]
    for raw in ("scale:factor=4", "patch", "pasta:other_weight=0.05", "steer:coefficient=2"):
        out = {}
        for b, m in models.items():
            spec = _attack(raw, m)
            dirs = (
                steering_directions(source, m, [e.prompt.ids for e in enc], positions, spec.layers)
                if spec.name == "steer"
                else None
            )
            out[b] = _logits(m, batch, spec, positions, source=source, directions=dirs)
        assert (out["transformer_lens"] - out["nnsight"]).abs().max() <= 1e-4, raw
        assert (out["nnsight"] - _logits(models["nnsight"], batch)).abs().max() > 1e-4, raw


def test_steering_direction_is_the_mean_difference(original, blocks_perturbed, synthetic_items):
    enc = [encode_item(original, it) for it in synthetic_items[:3]]
    positions = [e.prompt.positions_of("capital") for e in enc]
    dirs = steering_directions(original, blocks_perturbed, [e.prompt.ids for e in enc], positions, [1])
    name = "blocks.1.hook_resid_post"
    diffs = []
    with torch.no_grad():
        for e, pos in zip(enc, positions):
            ids = torch.tensor([e.prompt.ids])
            a = original.forward(ids, cache=[name]).cache[name][0, pos]
            b = blocks_perturbed.forward(ids, cache=[name]).cache[name][0, pos]
            diffs.append(a - b)
    assert torch.allclose(dirs[1], torch.cat(diffs).mean(0), atol=1e-5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("shout", "unknown intervention 'shout'"),
        ("scale:factor=0", "factor must be > 0"),
        ("scale:factor=-1", "factor must be > 0"),
        ("patch:layers=0-7", "layer 2 out of range"),
        ("pasta:heads=9", "heads must be in 0..3"),
        ("scale:size=3", "unknown option 'size'"),
        ("scale:factor=abc", "bad value for factor"),
        ("pasta:factor=0.2", "unknown option 'factor'"),
        ("focus", "unknown intervention 'focus'"),
        ("scale:hook=attn.hook_z", "hook must be one of"),
    ],
)
def test_bad_intervention_specs(text, message, original):
    with pytest.raises(InputError, match=message):
        _attack(text, original)


def test_spec_syntax_and_labels(original):
    spec = get_attack("pasta:layers=0-2+5,heads=1+3,other_weight=0.2")
    assert (spec.layers, spec.heads, spec.other_weight) == ((0, 1, 2, 5), (1, 3), 0.2)
    assert spec.label == "pasta[0,1,2,5]x0.2"
    assert _attack("scale", original).label == "scale[0]x2.0" and _attack("patch", original).label == "patch[0,1]"
    assert _attack("steer:coefficient=2", original).label == "steer[0]c2.0"


def test_steering_is_cross_fitted(original, blocks_perturbed, synthetic_items):
    """An item is steered with the direction fitted on the OTHER folds only; an item outside the fit set with the
    direction of every fit item; both checked against :func:`steering_directions` on the right items."""
    from unpact_mech.attacks.activation import fold_of

    fit = [it for it in synthetic_items if it.split == "forget"][:6]
    outside = [it for it in synthetic_items if it.split == "utility"][0]
    encoded = {it.id: encode_item(original, it) for it in fit + [outside]}
    from unpact_mech.attacks import ItemKeywords

    keywords = {i: ItemKeywords(i, ("q",), tuple(e.prompt.question_positions[:2]), "test") for i, e in encoded.items()}
    env = AttackEnv(original, blocks_perturbed, encoded, keywords, tuple(it.id for it in fit))
    steer = _attack("steer:layers=1,folds=3", blocks_perturbed)
    folds, directions = steer.fold_directions(env)
    assert folds == fold_of([it.id for it in fit], 3) and sorted(set(folds.values())) == [0, 1, 2]

    def fitted(items):
        prompts = [encoded[it.id].prompt.ids for it in items]
        return steering_directions(
            original, blocks_perturbed, prompts, [keywords[it.id].positions for it in items], [1]
        )[1]

    for it in fit[:3]:
        others = [o for o in fit if folds[o.id] != folds[it.id]]
        assert torch.allclose(directions[1][folds[it.id]], fitted(others), atol=1e-5)
        assert not torch.allclose(directions[1][folds[it.id]], fitted(fit), atol=1e-5)  # not the in-sample mean
    assert torch.allclose(directions[1][-1], fitted(fit), atol=1e-5)  # outside the fit set: every fit item

    # the intervention adds coefficient * (its item's fold direction) at the emphasised positions
    ids = [fit[0].id, outside.id]
    enc, batch = [encoded[i] for i in ids], None
    prompts = [e.prompt.ids for e in enc]
    batch = right_pad_teacher_forced(prompts, [e.answer_ids for e in enc], blocks_perturbed.pad_token_id, [0, 1])
    name = "blocks.1.hook_resid_post"
    ivs = steer.interventions([keywords[i].positions for i in ids], env, ids)(batch.layout)
    with torch.no_grad():
        plain = blocks_perturbed.forward(batch.input_ids, cache=[name]).cache[name]
        steered = blocks_perturbed.forward(batch.input_ids, interventions=ivs, cache=[name]).cache[name]
    for row, i in enumerate(ids):
        pos = list(keywords[i].positions)
        expected = directions[1][folds.get(i, 3)]
        assert torch.allclose(steered[row, pos] - plain[row, pos], expected.expand(len(pos), -1), atol=1e-5)
