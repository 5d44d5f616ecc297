"""Every method gives the same scores through both backends; a token nobody can read gets ~0 everywhere."""

from __future__ import annotations

from tests.unit.attribution.conftest import block_tokens
from unpact_mech.attribution import (
    attention_paths,
    grad_x_activation,
    grad_x_input,
    integrated_gradients,
    occlusion,
    residual_contributions,
)
from unpact_mech.scoring.tokens import encode_item

TOL = 1e-4


def _all_methods(model, item):
    return {
        "occlusion": occlusion(model, item, level="word").scores,
        "occlusion_packed": occlusion(model, item, batching="packed").scores,
        "grad_x_input": grad_x_input(model, item).position_scores,
        "integrated_gradients": integrated_gradients(model, item, steps=16).scores,
        "attention": attention_paths(model, item).contributions,
        "residual": residual_contributions(model, item).values,
        "grad_x_activation": grad_x_activation(model, item, ["blocks.1.hook_resid_mid", "blocks.0.attn.hook_z"]).scores[
            "blocks.0.attn.hook_z"
        ],
    }


def test_backends_agree(arch_pair, random_items):
    item = random_items[1]
    a, b = (_all_methods(arch_pair[name], item) for name in ("transformer_lens", "nnsight"))
    for method in a:
        assert a[method].shape == b[method].shape, method
        assert (a[method] - b[method]).abs().max().item() <= TOL, method
        assert a[method].abs().max() > 1e-4, method  # not trivially zero


def test_backends_agree_on_the_trained_tiny_model(tiny_model, tiny_nnsight, synthetic_items):
    item = synthetic_items[5]
    a, b = _all_methods(tiny_model, item), _all_methods(tiny_nnsight, item)
    for method in a:
        assert (a[method] - b[method]).abs().max().item() <= TOL, method


def test_a_token_the_answer_cannot_see_gets_zero(llama_pair, random_items):
    """Block attention to one question token (and to the replacement baseline) in every layer: its occlusion
    (replacement), gradient x input, integrated-gradients and attention-path scores vanish; the others do not."""
    item = random_items[1]  # Who wrote Hamlet in London?
    for model in llama_pair.values():
        enc = encode_item(model, item)
        pos = next(
            p for p in enc.prompt.question_positions if model.tokenizer.decode([enc.prompt.ids[p]]).strip() == "Hamlet"
        )
        blocked_id = enc.prompt.ids[pos]
        assert list(enc.prompt.ids).count(blocked_id) == 1
        factory = block_tokens(model, [blocked_id, model.pad_token_id])
        unit = enc.prompt.question_positions.index(pos)
        others = [i for i in range(len(enc.prompt.question_positions)) if i != unit]
        scores = {
            "occlusion": occlusion(model, item, mode="replace", interventions=factory).scores,
            "grad_x_input": grad_x_input(model, item, interventions=factory).scores,
            "integrated_gradients": integrated_gradients(model, item, steps=8, interventions=factory).scores,
            "attention": attention_paths(model, item, interventions=factory).contributions.sum((0, 1))[
                enc.prompt.question_positions
            ],
        }
        for name, s in scores.items():
            assert s[unit].abs().item() < 1e-6, (name, s)
            assert s[others].abs().max().item() > 1e-3, (name, s)
        # without the block the token matters
        assert occlusion(model, item, mode="replace").scores[unit].abs() > 1e-3
