"""Sum rules of the direct-path methods: attention paths and the residual-stream DLA."""

from __future__ import annotations

import pytest
import torch

from tests.unit.attribution.conftest import hf_copy
from unpact_mech.attribution import attention_paths, residual_contributions
from unpact_mech.errors import InputError
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.tokens import encode_item


def hf_readout(model, enc, target):
    """The readout straight from a plain HF model's logits: mean answer-token logit / first answer logit."""
    hf = hf_copy(model)
    ids = torch.tensor([list(enc.prompt.ids) + list(enc.answer_ids)])
    with torch.no_grad():
        logits = hf(input_ids=ids).logits[0]
    n, p = len(enc.answer_ids), len(enc.prompt.ids)
    rows = logits[torch.arange(p - 1, p - 1 + n), torch.tensor(enc.answer_ids)]
    return float(rows.mean() if target == "answer" else rows[0])


@pytest.mark.parametrize("target", ["answer", "first_logit"])
def test_residual_components_sum_to_the_final_logit(arch_pair, random_items, target):
    model = arch_pair["nnsight"]
    for item in random_items:
        enc = encode_item(model, item)
        res = residual_contributions(model, item, target=target)
        want = hf_readout(model, enc, target)
        assert abs(res.readout_value - want) < 1e-4
        assert abs(float(res.values.sum()) - want) < 1e-4, (item.id, res.components)
        n_layers = model.shape.n_layers
        assert res.components.count("attn") == res.components.count("mlp") == n_layers
        if model.arch.family == "gpt2":  # learned positions and LayerNorm bias are components too
            assert "pos_embed" in res.components and "norm_bias" in res.components
        else:
            assert "pos_embed" not in res.components and "norm_bias" not in res.components


def test_logit_lens_last_layer_is_the_model(arch_pair, random_items):
    model = arch_pair["transformer_lens"]
    for item in random_items:
        enc = encode_item(model, item)
        res = residual_contributions(model, item)
        lp = score_answers(model, [enc.prompt.ids], [enc.answer_ids]).logprob[0]
        assert abs(float(res.lens_logprob[-1]) - float(lp)) < 1e-4
        assert abs(res.target_value - float(lp)) < 1e-5
        assert res.lens_logprob.shape == res.lens_first_rank.shape == (model.shape.n_layers,)
        assert ((res.lens_first_prob > 0) & (res.lens_first_prob <= 1)).all()


@pytest.mark.parametrize("target", ["answer", "first_logit"])
def test_attention_paths_sum_to_the_layer_direct_contribution(arch_pair, random_items, target):
    model = arch_pair["transformer_lens"]
    for item in random_items:
        paths = attention_paths(model, item, target=target)
        res = residual_contributions(model, item, target=target)
        attn = res.values[[i for i, c in enumerate(res.components) if c == "attn"]]
        # sum over source positions and heads (+ the output bias term) == attn_out's direct contribution
        total = paths.contributions.sum((1, 2)) + paths.bias_terms
        assert torch.allclose(total, attn, atol=1e-4), (total, attn)
        assert torch.allclose(paths.layer_direct, attn, atol=1e-4)
        if model.arch.family == "gpt2":
            assert paths.bias_terms.abs().max() > 0
        assert paths.contributions.abs().max() > 1e-3
        # a query can only attend to earlier positions: sources after the last readout position contribute 0
        enc = encode_item(model, item)
        last_readout = len(enc.prompt.ids) - 1 + (len(enc.answer_ids) - 1 if target == "answer" else 0)
        assert (
            paths.contributions.shape[-1] > last_readout + 1
            and paths.contributions[..., last_readout + 1 :].abs().sum() == 0
        )


def test_attention_paths_layer_selection(llama_pair, random_items):
    model = llama_pair["transformer_lens"]
    full = attention_paths(model, random_items[0])
    part = attention_paths(model, random_items[0], layers=[2, 0])
    assert part.layers == (0, 2)
    assert torch.allclose(part.contributions, full.contributions[[0, 2]], atol=1e-6)
    frame = part.to_frame()
    assert set(frame.loc[frame.metric == "attention_path", "layer"]) == {0, 2}
    with pytest.raises(InputError, match="out of range"):
        attention_paths(model, random_items[0], layers=[3])
