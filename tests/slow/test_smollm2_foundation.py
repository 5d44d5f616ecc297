"""The foundation on the real SmolLM2-135M-Instruct (slow tier)."""

from __future__ import annotations

import torch

from tests.conftest import load_hf
from unpact_mech.models.hooks import add_vector, hook_name, positions_to_mask
from unpact_mech.scoring import evaluate_items, summarize_evaluation
from unpact_mech.scoring.batching import left_pad
from unpact_mech.scoring.tokens import encode_item


def _batch(model, items):
    enc = [encode_item(model, it).prompt.ids for it in items]
    return left_pad(enc, model.pad_token_id, list(range(len(items))))


def test_cache_holds_fp32_safetensors(smollm2):
    assert smollm2.shape.n_layers == 30 and smollm2.shape.d_model == 576 and smollm2.shape.n_kv_heads == 3
    assert any(smollm2.source_dir.glob("*.safetensors")) and smollm2.weights.W_E.dtype == torch.float32


def test_backends_match_hf_logits_on_smollm2(smollm2, smollm2_nnsight, real_facts):
    batch = _batch(smollm2, real_facts[:3])
    hf = load_hf(smollm2.source_dir)
    with torch.no_grad():
        ref = hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits
        real = batch.attention_mask.bool()
        for model in (smollm2, smollm2_nnsight):
            got = model.forward(batch.input_ids, attention_mask=batch.attention_mask).logits
            assert (got - ref)[real].abs().max().item() <= 1e-4, model.backend.name


def test_activations_and_interventions_agree_on_smollm2(smollm2, smollm2_nnsight, real_facts):
    ids = torch.tensor([encode_item(smollm2, real_facts[0]).prompt.ids])
    names = [
        hook_name(L, k)
        for L in (0, 14, 29)
        for k in ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_resid_mid", "hook_resid_post")
    ]
    vec = torch.randn(576, generator=torch.Generator().manual_seed(0)) * 10
    iv = add_vector("blocks.1.hook_resid_post", positions_to_mask([[2]], ids.shape[1]), vec)
    with torch.no_grad():
        a = smollm2.forward(ids, cache=names, interventions=[iv])
        b = smollm2_nnsight.forward(ids, cache=names, interventions=[iv])
        base = smollm2.forward(ids).logits
    for n in names:
        tol = 1e-4 * max(1.0, a.cache[n].abs().max().item() / 100)  # residual norms reach ~1e3 at the BOS sink
        assert (a.cache[n] - b.cache[n]).abs().max().item() <= tol, n
    assert (a.logits - b.logits).abs().max().item() <= 1e-4
    assert (a.logits - base).abs().max().item() > 1e-2


def test_smollm2_answers_the_builtin_real_facts(smollm2, real_facts):
    per_item = evaluate_items(smollm2, real_facts, progress=False)
    s = summarize_evaluation(per_item)
    assert s["accuracy"] >= 0.95, per_item.loc[per_item.correct == 0, ["item_id", "generation", "answer"]]
    assert len(real_facts) >= 60


def test_one_pass_evaluation_equals_two_passes_on_smollm2(smollm2, real_facts):
    """The chat template's shared prefix (24 tokens) computed once per batch and the prompt once for answer and
    scores (scoring/prompt_cache.py) give the same greedy answers, ranks and LPs as generating and scoring apart."""
    from unpact_mech.scoring.prompt_cache import shared_prefix_len

    items = real_facts[:64]
    assert shared_prefix_len([encode_item(smollm2, it).prompt.ids for it in items]) >= 20
    one = evaluate_items(smollm2, items, progress=False)
    two = evaluate_items(smollm2, items, progress=False, prompt_cache=False)
    assert (one["generation"] == two["generation"]).all() and (one["rank"] == two["rank"]).all()
    assert (one["logprob"] - two["logprob"]).abs().max() < 1e-4  # LP ~ -0.1 to -10; measured 1.9e-5 on 174 facts
    assert (one["first_prob"] - two["first_prob"]).abs().max() < 1e-5


def test_keyword_alignment_under_the_chat_template(smollm2, real_facts):
    item = next(it for it in real_facts if it.question == "What is the capital of France?")
    enc = encode_item(smollm2, item).prompt
    assert smollm2.prompt_format.kind == "chat" and enc.ids[0] == smollm2.tokenizer.bos_token_id
    decode = lambda pos: smollm2.tokenizer.decode([enc.ids[p] for p in pos]).strip()
    assert decode(enc.positions_of("capital")) == "capital"
    assert decode(enc.positions_of("France")) == "France"
    assert decode(enc.question_positions) == "What is the capital of France?"
    assert min(enc.question_positions) > 10  # the system prompt precedes the question and is never ablatable
