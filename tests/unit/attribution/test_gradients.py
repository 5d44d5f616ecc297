"""Gradient x input, gradient x activation and integrated gradients against plain autograd and completeness."""

from __future__ import annotations

import pytest
import torch

from tests.unit.attribution.conftest import hf_copy
from unpact_mech.attribution import grad_x_activation, grad_x_input, integrated_gradients
from unpact_mech.errors import InputError
from unpact_mech.scoring.tokens import encode_item


def hf_lp(hf, emb, prompt_len, answer):
    """The paper's LP computed directly on a plain HF model (independent of the package's code path)."""
    logits = hf(inputs_embeds=emb).logits[0]
    lp = torch.log_softmax(logits[prompt_len - 1 : prompt_len - 1 + len(answer)], -1)
    return lp[torch.arange(len(answer)), torch.tensor(answer)].mean()


def test_grad_x_input_equals_plain_autograd(arch_pair, random_items):
    model = arch_pair["transformer_lens"]
    hf = hf_copy(model)
    for item in random_items[:2]:
        enc = encode_item(model, item)
        ids = torch.tensor([list(enc.prompt.ids) + list(enc.answer_ids)])
        emb = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
        hf_lp(hf, emb, len(enc.prompt.ids), enc.answer_ids).backward()
        want = (emb.grad[0] * emb[0].detach()).sum(-1)[: len(enc.prompt.ids)]
        res = grad_x_input(model, item)
        assert torch.allclose(res.position_scores, want, atol=1e-5)
        assert torch.allclose(res.scores, want[enc.prompt.question_positions], atol=1e-5)
        words = grad_x_input(model, item, level="word")
        assert torch.allclose(words.scores.sum(), res.scores.sum(), atol=1e-5)  # words partition the question
        assert all(p.grad is None for p in model.parameters())  # parameters frozen: no weight gradients


def test_grad_x_activation_shapes_and_consistency(llama_pair, random_items):
    model = llama_pair["transformer_lens"]
    item = random_items[0]
    hooks = [
        "hook_embed",
        "blocks.1.hook_resid_post",
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_v",
        "blocks.2.attn.hook_z",
    ]
    res = grad_x_activation(model, item, hooks)
    enc = encode_item(model, item)
    n, s = len(enc.prompt.ids) + len(enc.answer_ids) - 1, model.shape  # the last answer token is no input
    assert res.scores["hook_embed"].shape == (n,)
    assert res.scores["blocks.0.attn.hook_pattern"].shape == (s.n_heads, n)
    assert res.scores["blocks.0.attn.hook_v"].shape == (n, s.n_kv_heads)
    assert res.scores["blocks.2.attn.hook_z"].shape == (n, s.n_heads)
    gxi = grad_x_input(model, item)
    assert torch.allclose(res.scores["hook_embed"][: len(enc.prompt.ids)], gxi.position_scores, atol=1e-6)
    frame = res.to_frame()
    assert {"hook", "layer", "head", "position", "token", "metric", "value"} <= set(frame.columns)
    assert len(frame) == n + n + s.n_heads * n + n * s.n_kv_heads + n * s.n_heads
    assert frame.token.iloc[0] == model.tokenizer.convert_ids_to_tokens(enc.prompt.ids[0])  # BOS label
    with pytest.raises(InputError, match="unknown hook name"):
        grad_x_activation(model, item, ["blocks.0.hook_nope"])
    with pytest.raises(InputError, match="out of range"):
        grad_x_activation(model, item, ["blocks.9.hook_resid_post"])


@pytest.mark.parametrize("target", ["answer", "first_logit"])
def test_ig_completeness_on_a_tiny_gpt2(gpt2_pair, random_items, target):
    model = gpt2_pair["transformer_lens"]
    for item in random_items:
        res = integrated_gradients(model, item, steps=64, target=target)
        gap = res.target_value - res.details["f_baseline"]
        assert abs(gap) > 1e-3  # a real gap, not 0 / 0
        assert res.details["completeness_rel"] < 0.01, (item.id, res.details)
        assert abs(float(res.scores.sum()) - gap - res.details["completeness_delta"]) < 1e-5


def test_ig_completeness_on_the_trained_tiny_model(tiny_model, synthetic_items):
    for item in synthetic_items[:4]:
        res = integrated_gradients(tiny_model, item, steps=64)
        assert res.details["completeness_rel"] < 0.01, (item.id, res.details)


def test_ig_shared_prefix_and_chunking_change_nothing(llama_pair, random_items):
    model = llama_pair["transformer_lens"]
    item = random_items[1]
    ref = integrated_gradients(model, item, steps=8, share_prefix=False, batch_size=100)
    for kwargs in ({"share_prefix": True, "batch_size": 3}, {"share_prefix": True}):
        got = integrated_gradients(model, item, steps=8, **kwargs)
        assert torch.allclose(got.position_scores, ref.position_scores, atol=1e-5)
        assert abs(got.details["f_baseline"] - ref.details["f_baseline"]) < 1e-5


def test_ig_first_token_and_template_stay_fixed(tiny_model, synthetic_items):
    item = synthetic_items[0]
    enc = encode_item(tiny_model, item)
    res = integrated_gradients(tiny_model, item, steps=8)
    outside = [p for p in range(len(enc.prompt.ids)) if p not in enc.prompt.question_positions]
    assert res.position_scores[outside].abs().max() == 0
    every = integrated_gradients(tiny_model, item, steps=8, positions="prompt")
    assert every.position_scores[0] == 0 and every.position_scores[1:].abs().min() > 0
    token = integrated_gradients(tiny_model, item, steps=8, baseline="?")  # a one-token baseline embedding
    assert not torch.allclose(token.scores, res.scores)
    with pytest.raises(InputError, match="at least 2 steps"):
        integrated_gradients(tiny_model, item, steps=1)


@pytest.mark.parametrize("kind", ["attn.hook_attn_scores", "attn.hook_q", "mlp.hook_post", "ln_final"])
def test_grad_x_activation_at_the_new_hooks_equals_autograd(llama_pair, random_items, kind):
    """(act * d target / d act) reduced as documented, against autograd through a hook that keeps the tensor:
    scores sum over query positions (H, T_k), q over d_head (T, H), (T, d) hooks over d (T,)."""
    model = llama_pair["transformer_lens"]
    item = random_items[0]
    name = "ln_final.hook_normalized" if kind == "ln_final" else f"blocks.1.{kind}"
    enc = encode_item(model, item)
    ids = torch.tensor([list(enc.prompt.ids) + list(enc.answer_ids)])[:, :-1]
    kept: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        kept["act"] = act
        return act

    with torch.enable_grad(), model.hooks(fwd_hooks=[(name, keep)]):
        logits = model(ids)[0]
        p = len(enc.prompt.ids)
        lp = torch.log_softmax(logits[p - 1 : p - 1 + len(enc.answer_ids)], -1)
        target = lp[torch.arange(len(enc.answer_ids)), torch.tensor(enc.answer_ids)].mean()
        (grad,) = torch.autograd.grad(target, kept["act"])
    prod = (kept["act"] * grad).detach()[0]
    want = prod.sum(-2) if kind == "attn.hook_attn_scores" else prod.sum(-1)
    got = grad_x_activation(model, item, [name]).scores[name]
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    frame = grad_x_activation(model, item, [name]).to_frame()
    if kind == "attn.hook_attn_scores":  # one row per (head, key position)
        assert len(frame) == model.shape.n_heads * ids.shape[1] and frame["head"].max() == model.shape.n_heads - 1
