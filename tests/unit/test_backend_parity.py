"""Both backends against plain HF and against each other, on tiny random Llama and GPT-2 models."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import BACKENDS, load_hf, random_ids
from unpact_mech import load_model
from unpact_mech.models.hooks import BLOCK_KINDS, Intervention, add_vector, hook_name, positions_to_mask

TOL = 1e-4


def test_logits_match_hf(pair):
    hf, models = pair
    ids = random_ids()
    ref = hf(input_ids=ids).logits
    for name, model in models.items():
        got = model.forward(ids).logits
        assert (got - ref).abs().max().item() <= TOL, name


def test_left_padded_batch_matches_unpadded_rows(pair):
    hf, models = pair
    ids = random_ids(length=8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is a 5-token prompt, left-padded
    for name, model in models.items():
        batched = model.forward(ids, attention_mask=mask).logits
        alone = model.forward(ids[1:, 3:]).logits
        assert (batched[1, 3:] - alone[0]).abs().max().item() <= TOL, name
        ref = hf(input_ids=ids[1:, 3:]).logits
        assert (alone - ref).abs().max().item() <= TOL, name


def test_same_activations_through_both_backends(pair):
    _, models = pair
    model = models["transformer_lens"]
    names = ["hook_embed"] + [hook_name(L, k) for L in range(model.shape.n_layers) for k in BLOCK_KINDS]
    names.append("ln_final.hook_normalized")
    ids = random_ids()
    caches = {b: m.run_with_cache(ids, names)[1] for b, m in models.items()}
    for name in names:
        a, b = caches["transformer_lens"][name], caches["nnsight"][name]
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() <= 1e-5, name
    c = caches["nnsight"]
    s = model.shape
    assert c["blocks.0.attn.hook_pattern"].shape == (2, s.n_heads, 9, 9)
    assert c["blocks.0.attn.hook_z"].shape == (2, 9, s.n_heads, s.d_head)
    assert c["blocks.0.attn.hook_v"].shape == (2, 9, s.n_kv_heads, s.d_head)
    for L in range(s.n_layers):  # the residual stream decomposes exactly
        pre, mid, post = (c[hook_name(L, k)] for k in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"))
        assert torch.allclose(mid, pre + c[hook_name(L, "hook_attn_out")], atol=1e-5)
        assert torch.allclose(post, mid + c[hook_name(L, "hook_mlp_out")], atol=1e-5)
    assert torch.allclose(c["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(2, s.n_heads, 9), atol=1e-5)


def test_added_vector_changes_logits_identically(pair):
    hf, models = pair
    ids = random_ids()
    d = models["nnsight"].shape.d_model
    vec = torch.randn(d, generator=torch.Generator().manual_seed(1)) * 5
    mask = positions_to_mask([[2], [2]], ids.shape[1])
    iv = add_vector("blocks.1.hook_resid_post", mask, vec)
    out = {b: m.forward(ids, interventions=[iv]).logits for b, m in models.items()}
    base = hf(input_ids=ids).logits
    assert (out["transformer_lens"] - out["nnsight"]).abs().max().item() <= 1e-5
    changed = (out["nnsight"] - base).abs().amax(-1)  # (B, T)
    assert changed[:, :2].max().item() <= TOL  # positions before 2 cannot see the edit
    assert changed[:, 2:].min().item() > 1e-3  # position 2 and later do


@pytest.mark.parametrize("kind", [*BLOCK_KINDS, "ln_final.hook_normalized"])
def test_every_hook_kind_edits_identically(pair, kind):
    _, models = pair
    ids = random_ids()
    name = kind if kind.startswith("ln_final") else hook_name(1, kind)
    g = torch.Generator().manual_seed(2)

    if kind == "attn.hook_pattern":

        def fn(act, ctx):  # halve attention to key 1 and renormalise
            act = act.clone()
            act[..., 1] *= 0.5
            return act / act.sum(-1, keepdim=True)
    else:
        noise = None

        def fn(act, ctx):
            nonlocal noise
            if noise is None:
                noise = torch.randn(act.shape, generator=g)
            return act + noise

    base = models["nnsight"].forward(ids).logits
    out = {b: m.forward(ids, interventions=[Intervention(name, fn)]).logits for b, m in models.items()}
    assert (out["transformer_lens"] - out["nnsight"]).abs().max().item() <= 1e-5
    assert (out["nnsight"] - base).abs().max().item() > 1e-3


def test_resid_mid_edit_reaches_the_residual_stream(pair):
    """Adding v at resid_mid must equal adding v at attn_out (TL 4.3's native alias only feeds the MLP)."""
    _, models = pair
    ids = random_ids()
    vec = torch.randn(models["nnsight"].shape.d_model, generator=torch.Generator().manual_seed(3)) * 5
    mask = positions_to_mask([[3], [4]], ids.shape[1])
    for b, m in models.items():
        a = m.forward(ids, interventions=[add_vector("blocks.0.hook_resid_mid", mask, vec)]).logits
        c = m.forward(ids, interventions=[add_vector("blocks.0.hook_attn_out", mask, vec)]).logits
        assert (a - c).abs().max().item() <= 1e-5, b


def test_empty_mask_is_exact_noop(pair):
    _, models = pair
    ids = random_ids()
    empty = positions_to_mask([[], []], ids.shape[1])
    for b, m in models.items():
        base = m.forward(ids).logits
        got = m.forward(
            ids, interventions=[add_vector("blocks.0.hook_resid_post", empty, torch.ones(m.shape.d_model))]
        ).logits
        assert torch.equal(base, got), b


def test_optimizer_step_is_seen_by_both_backends(arch_dir):
    """The backend wraps the HookedLM's own HF module: an update needs no reload."""
    ids = random_ids()
    for b in BACKENDS:
        model = load_model(arch_dir, backend=b)
        before = model.forward(ids).logits.detach()
        opt = torch.optim.SGD(model.hf.parameters(), lr=0.5)
        loss = model.hf(input_ids=ids).logits.logsumexp(-1).mean()
        loss.backward()
        opt.step()
        after = model.forward(ids).logits.detach()
        assert (after - before).abs().max().item() > 1e-3, b
        ref = load_hf(arch_dir)
        ref.load_state_dict(model.state_dict())
        assert (ref(input_ids=ids).logits - after).abs().max().item() <= TOL, b


def test_gradients_agree(pair):
    """d(logit)/d(input embeddings) and d(logit)/d(resid_post) are the same through both backends and HF."""
    hf, models = pair
    ids = random_ids(n_rows=1)
    target = 7
    emb_ref = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
    hf(inputs_embeds=emb_ref).logits[0, -1, target].backward()
    grads = {}
    for b, m in models.items():
        emb = m.embed(ids).detach().requires_grad_(True)
        out = m.forward(inputs_embeds=emb, cache=["blocks.1.hook_resid_post"])
        act = out.cache["blocks.1.hook_resid_post"]
        g_emb, g_act = torch.autograd.grad(out.logits[0, -1, target], [emb, act])
        assert (g_emb - emb_ref.grad).abs().max().item() <= 1e-5, b
        grads[b] = g_act
    assert (grads["transformer_lens"] - grads["nnsight"]).abs().max().item() <= 1e-6


def test_greedy_generation_matches_hf_and_full_recompute(pair):
    hf, models = pair
    ids = random_ids(n_rows=1, length=5)
    ref = hf.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 5:]
    vec = torch.randn(models["nnsight"].shape.d_model, generator=torch.Generator().manual_seed(4)) * 20
    iv = add_vector("blocks.0.hook_resid_post", positions_to_mask([[1, 3]], 5), vec)
    for b, m in models.items():
        m.hf.generation_config.eos_token_id = None
        stop = m.tokenizer.eos_token_id
        assert stop not in ref.tolist(), "random model emitted EOS: pick another seed"
        assert m.generate(ids, max_new_tokens=6)[0].tolist() == ref.tolist(), b
        # an edit at prompt positions: KV-cached decoding == recomputing the whole sequence each step
        cached = m.generate(ids, max_new_tokens=6, interventions=[iv])[0]
        seq = ids
        for _ in range(6):
            nxt = m.forward(seq, interventions=[iv]).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        assert cached.tolist() == seq[0, 5:].tolist(), b


def test_interventions_stay_active_on_every_decoding_step(pair):
    """Pushing token t's unembedding direction at every position makes every generated token t."""
    _, models = pair
    ids = random_ids(n_rows=2, length=5)
    for b, m in models.items():
        m.hf.generation_config.eos_token_id = None
        plain = m.generate(ids, max_new_tokens=5)
        target = int(plain[0, 0]) + 1
        direction = m.weights.W_U[:, target].detach()
        last = hook_name(m.shape.n_layers - 1, "hook_resid_post")
        seen = []

        def push(act, ctx, d=direction, seen=seen):
            seen.append(ctx.query_positions.tolist())
            return act + 1000 * d / d.norm()

        got = m.generate(ids, max_new_tokens=5, interventions=[Intervention(last, push)])
        assert (got == target).all(), b
        assert seen == [[0, 1, 2, 3, 4], [5], [6], [7], [8]], b  # prompt forward, then one position per step


def test_reference_copy_is_frozen_and_independent(arch_dir):
    model = load_model(arch_dir)
    ids = random_ids()
    ref = model.reference_copy()
    assert all(not p.requires_grad for p in ref.parameters())
    assert torch.allclose(ref.forward(ids).logits, model.forward(ids).logits, atol=1e-6)
    with torch.no_grad():  # random noise: a constant shift would vanish in GPT-2's LayerNorm
        first = next(model.parameters())
        first.add_(torch.randn(first.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(ref.forward(ids).logits, model.forward(ids).logits, atol=1e-3)


def test_save_roundtrip_and_input_untouched(arch_dir, tmp_path):
    import hashlib

    def digest(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}

    before = digest(arch_dir)
    model = load_model(arch_dir, backend="nnsight")
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    ids = random_ids()
    logits = model.forward(ids).logits
    out = model.save(tmp_path / "saved")
    again = load_model(out, backend="nnsight")
    assert torch.equal(again.forward(ids).logits, logits)
    assert again.lineage == model.lineage
    assert digest(arch_dir) == before
