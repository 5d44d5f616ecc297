"""The TransformerLens-style vocabulary and API on both backends: ``attn.hook_q`` / ``hook_k`` /
``hook_attn_scores``, ``mlp.hook_pre`` / ``hook_post``, ``ln_final.hook_normalized``; ``run_with_cache`` with filters,
``hooks`` / ``run_with_hooks``, ``to_tokens`` / ``to_str_tokens``, ``model(ids)``; and docs/hooks.md, executed.

Every value is checked three ways: the two backends agree (<= 1e-5), and the value is recomputed from the plain HF
module's weights (projections, rotary embedding, MLP, final norm, unembedding)."""

from __future__ import annotations

import dataclasses
import re
import runpy
from pathlib import Path

import pytest
import torch

from tests.conftest import BACKENDS, random_ids
from unpact_mech import load_model
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import BLOCK_KINDS, Intervention, edit_positions, hook_name

NEW_KINDS = ("attn.hook_q", "attn.hook_k", "attn.hook_attn_scores", "mlp.hook_pre", "mlp.hook_post")
NEW_HOOKS = tuple(f"blocks.1.{k}" for k in NEW_KINDS) + ("ln_final.hook_normalized",)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def _max(a, b) -> float:
    return (a - b).abs().max().item()


def _hf_blocks(hf):
    return hf.model.layers if hasattr(hf, "model") else hf.transformer.h


# -- vocabulary and caching --------------------------------------------------------------------------------------------
def test_hook_names_is_the_whole_vocabulary_in_execution_order(pair):
    _, models = pair
    for b, m in models.items():
        names = m.hook_names()
        n = m.shape.n_layers
        expected = ["hook_embed"] + [hook_name(L, k) for L in range(n) for k in BLOCK_KINDS]
        assert names == expected + ["ln_final.hook_normalized"], b
        for hook in NEW_HOOKS:
            assert hook in names
        # q and k are after the rotary embedding, which runs after the value projection
        assert (
            names.index("blocks.0.attn.hook_v")
            < names.index("blocks.0.attn.hook_q")
            < names.index("blocks.0.attn.hook_attn_scores")
            < names.index("blocks.0.attn.hook_pattern")
        )
        assert (
            names.index("blocks.0.mlp.hook_pre")
            < names.index("blocks.0.mlp.hook_post")
            < names.index("blocks.0.hook_mlp_out")
        )


def test_run_with_cache_none_caches_every_hook_identically(pair):
    _, models = pair
    ids = random_ids()
    out = {b: m.run_with_cache(ids) for b, m in models.items()}
    names = models["nnsight"].hook_names()
    for b, (logits, cache) in out.items():
        assert set(cache) == set(names) and len(cache) == len(names), b
        assert torch.equal(logits, models[b].forward(ids).logits), b
    a, c = out["transformer_lens"][1], out["nnsight"][1]
    for name in names:
        assert a[name].shape == c[name].shape, name
        assert _max(a[name], c[name]) <= 1e-5, name
    s = models["nnsight"].shape
    assert c["blocks.0.attn.hook_q"].shape == (2, 9, s.n_heads, s.d_head)
    assert c["blocks.0.attn.hook_k"].shape == (2, 9, s.n_kv_heads, s.d_head)
    assert c["blocks.0.attn.hook_attn_scores"].shape == (2, s.n_heads, 9, 9)
    assert c["blocks.0.mlp.hook_pre"].shape == (2, 9, s.d_mlp)
    assert c["blocks.0.mlp.hook_post"].shape == (2, 9, s.d_mlp)
    assert c["ln_final.hook_normalized"].shape == (2, 9, s.d_model)


def test_names_filter_list_string_and_predicate(pair):
    _, models = pair
    ids = random_ids()
    for b, m in models.items():
        _, cache = m.run_with_cache(ids, lambda n: n.endswith("mlp.hook_post"))
        assert list(cache) == [hook_name(L, "mlp.hook_post") for L in range(m.shape.n_layers)], b
        _, cache = m.run_with_cache(ids, names_filter=lambda n: n.startswith("blocks.1.attn."))
        assert sorted(cache) == sorted(n for n in m.hook_names() if n.startswith("blocks.1.attn.")), b
        assert len(cache) == 6
        _, cache = m.run_with_cache(ids, "ln_final.hook_normalized")
        assert list(cache) == ["ln_final.hook_normalized"], b
        _, cache = m.run_with_cache(ids, ["blocks.0.attn.hook_q", "hook_embed"])  # the older positional list
        assert set(cache) == {"blocks.0.attn.hook_q", "hook_embed"}, b
        _, again = m.run_with_cache(ids, names=["blocks.0.attn.hook_q"])
        assert torch.equal(again["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_q"]), b
        with pytest.raises(InputError, match="blocks.0.attn.hook_rot_q"):
            m.run_with_cache(ids, ["blocks.0.attn.hook_rot_q"])
        with pytest.raises(InputError, match="out of range"):
            m.run_with_cache(ids, [f"blocks.{m.shape.n_layers}.mlp.hook_post"])


# -- values recomputed from the HF module ------------------------------------------------------------------------------
def _qk_from_hf(hf, layer: int, resid_pre: torch.Tensor):
    """(q (B,T,H,dh), k (B,T,H_kv,dh)) recomputed from the layer input with HF's weights (and rotary embedding)."""
    block = _hf_blocks(hf)[layer]
    B, T, _ = resid_pre.shape
    if hasattr(block, "self_attn"):  # llama: projections, then the rotary embedding
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn = block.self_attn
        x = block.input_layernorm(resid_pre)
        q = attn.q_proj(x).view(B, T, -1, attn.head_dim)
        k = attn.k_proj(x).view(B, T, -1, attn.head_dim)
        cos, sin = hf.model.rotary_emb(x, torch.arange(T)[None].expand(B, T))
        q_rot, k_rot = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        assert _max(q_rot.transpose(1, 2), q) > 1e-3  # the rotation does something (position > 0)
        return q_rot.transpose(1, 2), k_rot.transpose(1, 2), attn.scaling
    attn = block.attn  # gpt2: thirds of the fused projection, no rotary embedding
    q, k, _ = attn.c_attn(block.ln_1(resid_pre)).split(attn.split_size, dim=2)
    return q.view(B, T, -1, attn.head_dim), k.view(B, T, -1, attn.head_dim), attn.head_dim**-0.5


def test_q_k_and_scores_recomputed_from_hf_weights(pair):
    hf, models = pair
    ids = random_ids()
    T = ids.shape[1]
    for b, m in models.items():
        _, c = m.run_with_cache(ids)
        for L in range(m.shape.n_layers):
            with torch.no_grad():
                q, k, scale = _qk_from_hf(hf, L, c[hook_name(L, "hook_resid_pre")])
            assert _max(c[hook_name(L, "attn.hook_q")], q) <= 1e-5, (b, L)
            assert _max(c[hook_name(L, "attn.hook_k")], k) <= 1e-5, (b, L)
            # scores = q . k * scale on visible keys (GQA: each key head serves H / H_kv query heads) ...
            rep = m.shape.n_heads // m.shape.n_kv_heads
            k_full = k.repeat_interleave(rep, dim=2)
            expect = torch.einsum("bqhd,bkhd->bhqk", q, k_full) * scale
            scores = c[hook_name(L, "attn.hook_attn_scores")]
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            assert _max(scores[..., causal], expect[..., causal]) <= 1e-4, (b, L)
            # ... and finfo.min (HF's additive mask) on masked ones; softmax gives the pattern
            assert (scores[..., ~causal] == torch.finfo(scores.dtype).min).all(), (b, L)
            pattern = c[hook_name(L, "attn.hook_pattern")]
            assert _max(scores.softmax(-1), pattern) <= 1e-6, (b, L)


def test_scores_mask_convention_on_a_left_padded_batch(pair):
    _, models = pair
    ids = random_ids(length=8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    fmin = torch.finfo(torch.float32).min
    caches = {
        b: m.run_with_cache(ids, ["blocks.0.attn.hook_attn_scores"], attention_mask=mask)[1] for b, m in models.items()
    }
    a, c = (caches[b]["blocks.0.attn.hook_attn_scores"] for b in BACKENDS)
    assert _max(a, c) <= 1e-5
    assert (c[1, :, 3:, :3] == fmin).all()  # real queries never see the pads
    assert torch.isfinite(c).all()  # never -inf: a fully masked (pad) query row still softmaxes without NaN
    assert (c[1, :, 3:, 3:].tril() > fmin / 2).sum() > 0


def test_mlp_pre_post_recomputed_and_post_times_W_out_is_mlp_out(pair):
    hf, models = pair
    ids = random_ids()
    for b, m in models.items():
        _, c = m.run_with_cache(ids)
        for L in range(m.shape.n_layers):
            block = _hf_blocks(hf)[L]
            mid = c[hook_name(L, "hook_resid_mid")]
            pre, post = c[hook_name(L, "mlp.hook_pre")], c[hook_name(L, "mlp.hook_post")]
            with torch.no_grad():
                if hasattr(block, "self_attn"):  # gated: pre is the gate, post = act(gate) * up
                    x = block.post_attention_layernorm(mid)
                    gate, up = block.mlp.gate_proj(x), block.mlp.up_proj(x)
                    assert _max(pre, gate) <= 1e-5, (b, L)
                    assert _max(post, block.mlp.act_fn(gate) * up) <= 1e-5, (b, L)
                    W_out, b_out = block.mlp.down_proj.weight.T, None
                else:
                    x = block.ln_2(mid)
                    assert _max(pre, block.mlp.c_fc(x)) <= 1e-5, (b, L)
                    assert _max(post, block.mlp.act(pre)) <= 1e-5, (b, L)
                    W_out, b_out = block.mlp.c_proj.weight, block.mlp.c_proj.bias
            assert torch.equal(m.weights.W_out(L), W_out), (b, L)
            bias = m.weights.b_out(L)
            assert bias is None if b_out is None else torch.equal(bias, b_out), (b, L)
            mlp_out = c[hook_name(L, "hook_mlp_out")]
            assert _max(post @ m.weights.W_out(L) + (0 if bias is None else bias), mlp_out) <= 1e-4, (b, L)


def test_ln_final_normalized_times_W_U_is_the_logits(pair):
    hf, models = pair
    ids = random_ids()
    for b, m in models.items():
        logits, c = m.run_with_cache(
            ids, ["ln_final.hook_normalized", hook_name(m.shape.n_layers - 1, "hook_resid_post")]
        )
        norm = c["ln_final.hook_normalized"]
        assert _max(norm @ m.weights.W_U, logits) <= 1e-4, b
        final_norm = hf.model.norm if hasattr(hf, "model") else hf.transformer.ln_f
        with torch.no_grad():
            resid = c[hook_name(m.shape.n_layers - 1, "hook_resid_post")]
            assert _max(norm, final_norm(resid)) <= 1e-5, b


# -- editing: a forward, gradients, generation -------------------------------------------------------------------------
def test_gradients_reach_every_hook_identically(pair):
    """Cached activations are graph nodes at every hook (resid_mid is derived, see hooks.py); both backends agree.

    An edit (x1.5) at every new hook is active at the same time: gradients flow through edits too."""
    _, models = pair
    ids = random_ids(n_rows=1)
    target = 7
    names = [n for n in models["nnsight"].hook_names() if not n.endswith("hook_resid_mid")]
    edits = [Intervention(h, lambda act, ctx: act * 1.5) for h in NEW_HOOKS]
    grads = {}
    for b, m in models.items():
        with torch.enable_grad():
            out = m.forward(ids, cache=names, interventions=edits)
            g = torch.autograd.grad(out.logits[0, -1, target], [out.cache[n] for n in names])
        grads[b] = dict(zip(names, g))
        # the cache holds the value after the edit, which the unembedding reads: d logit / d normalized = W_U[:, t]
        assert _max(grads[b]["ln_final.hook_normalized"][0, -1], m.weights.W_U[:, target]) <= 1e-5, b
    for name in names:
        a, c = grads["transformer_lens"][name], grads["nnsight"][name]
        assert _max(a, c) <= 1e-5 * max(1.0, c.abs().max().item()), name
        assert c.abs().max().item() > 0, name


def test_editing_every_hook_at_once_agrees_between_backends(pair):
    """One edit at every hook of the vocabulary in the same forward (nnsight edits GPT-2's fused q/k/v and Llama's
    rotated (q, k) in one visit each); the cache holds the edited values."""
    _, models = pair
    ids = random_ids()
    names = models["nnsight"].hook_names()
    edits = [Intervention(n, lambda act, ctx: act + 0.01) for n in names]
    out = {b: m.forward(ids, interventions=edits, cache=names) for b, m in models.items()}
    assert _max(out["transformer_lens"].logits, out["nnsight"].logits) <= 1e-5
    assert _max(out["nnsight"].logits, models["nnsight"](ids)) > 1e-3
    for name in names:
        assert _max(out["transformer_lens"].cache[name], out["nnsight"].cache[name]) <= 1e-5, name


def test_run_with_hooks_equals_forward_with_interventions(pair):
    _, models = pair
    ids = random_ids()
    for b, m in models.items():
        seen = []

        def ablate_head_0(act, hook, seen=seen):  # TransformerLens' convention: fn(activation, hook) with hook.name
            seen.append(hook.name)
            act = act.clone()
            act[:, :, 0] = 0.0
            return act

        def neuron_off(act, hook, seen=seen):
            seen.append(hook.name)
            return torch.cat([act[..., :1] * 0, act[..., 1:]], dim=-1)

        def reads_only(act, hook, seen=seen):
            seen.append(hook.name)  # returns None: unchanged

        fwd = [("blocks.1.attn.hook_q", ablate_head_0), ("blocks.0.mlp.hook_post", neuron_off)]
        got = m.run_with_hooks(ids, fwd_hooks=[*fwd, ("blocks.1.attn.hook_attn_scores", reads_only)])
        assert seen == ["blocks.0.mlp.hook_post", "blocks.1.attn.hook_q", "blocks.1.attn.hook_attn_scores"], b
        ref = m.forward(ids, interventions=[Intervention(n, f) for n, f in fwd]).logits
        assert torch.equal(got, ref), b
        assert _max(got, m(ids)) > 1e-3, b
        # a predicate picks names, as in TransformerLens
        pred = m.run_with_hooks(ids, fwd_hooks=[(lambda n: n.endswith("mlp.hook_post"), neuron_off)])
        every = [Intervention(hook_name(L, "mlp.hook_post"), neuron_off) for L in range(m.shape.n_layers)]
        assert torch.equal(pred, m.forward(ids, interventions=every).logits), b


def test_hooks_context_applies_to_every_forward_and_ends(pair):
    _, models = pair
    ids = random_ids(n_rows=1, length=5)
    for b, m in models.items():
        m.hf.generation_config.eos_token_id = None
        base_logits, base_gen = m(ids), m.generate(ids, max_new_tokens=4)
        flip = [("ln_final.hook_normalized", lambda act, hook: -act)]
        with m.hooks(fwd_hooks=flip):
            assert torch.allclose(m(ids), -base_logits, atol=1e-5), b
            assert torch.allclose(m.run_with_cache(ids, [])[0], -base_logits, atol=1e-5), b
            with m.hooks(fwd_hooks=flip):  # nested: flipped twice
                assert torch.allclose(m(ids), base_logits, atol=1e-5), b
            gen = m.generate(ids, max_new_tokens=4)
            assert not torch.equal(gen, base_gen), b
        assert torch.equal(m(ids), base_logits), b  # the context removed its hooks
        with (
            pytest.raises(InputError, match="hook_nonsense"),
            m.hooks(fwd_hooks=[("blocks.0.hook_nonsense", flip[0][1])]),
        ):
            pass


#: Deterministic, per-position edits (the same at a position whether it is computed in the prompt forward or
#: recomputed later), strong enough to change greedy tokens of the random models.
GEN_EDITS = {
    "attn.hook_q": lambda act, ctx: act * 6.0,
    "attn.hook_k": lambda act, ctx: -4.0 * act,
    "attn.hook_attn_scores": lambda act, ctx: torch.where(act > torch.finfo(act.dtype).min / 2, -act * 8.0, act),
    "mlp.hook_pre": lambda act, ctx: -3.0 * act,
    "mlp.hook_post": lambda act, ctx: act * -4.0 + 1.0,
    "ln_final.hook_normalized": lambda act, ctx: -act,
}


@pytest.mark.parametrize("kind", list(GEN_EDITS))
def test_edit_at_each_new_hook_changes_generation_on_both_backends(pair, kind):
    """The edit runs on the prompt forward and every decoding step, changes the greedy tokens, is the same on both
    backends, and KV-cached decoding equals recomputing the whole sequence with the edit at every step."""
    _, models = pair
    ids = random_ids(n_rows=2, length=5, seed=3)
    name = kind if kind.startswith("ln_final") else hook_name(1, kind)
    outs = {}
    for b, m in models.items():
        m.hf.generation_config.eos_token_id = None
        seen = []

        def fn(act, ctx, seen=seen, edit=GEN_EDITS[kind]):
            seen.append(ctx.query_positions.tolist())
            return edit(act, ctx)

        iv = Intervention(name, fn)
        plain = m.generate(ids, max_new_tokens=5)
        edited = m.generate(ids, max_new_tokens=5, interventions=[iv])
        assert seen == [[0, 1, 2, 3, 4], [5], [6], [7], [8]], (b, kind)
        assert not torch.equal(plain, edited), (b, kind)
        seq = ids
        for _ in range(5):
            nxt = m.forward(seq, interventions=[iv]).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
        assert torch.equal(edited, seq[:, 5:]), (b, kind)
        outs[b] = edited
    assert torch.equal(outs["transformer_lens"], outs["nnsight"]), kind


def test_edit_positions_refuses_key_axis_hooks():
    mask = torch.ones(1, 3, dtype=torch.bool)
    for kind in ("attn.hook_attn_scores", "attn.hook_pattern"):
        with pytest.raises(ValueError, match="key-axis"):
            edit_positions(hook_name(0, kind), mask, lambda rows: rows)
    edit_positions("blocks.0.mlp.hook_post", mask, lambda rows: rows)  # (B, T, d_mlp) is fine


def test_a_hook_the_architecture_lacks_is_a_one_line_input_error(llama_dir, monkeypatch):
    import unpact_mech.models.hooked as hooked

    real = hooked.architecture_for
    monkeypatch.setattr(
        hooked,
        "architecture_for",
        lambda cfg: dataclasses.replace(real(cfg), missing_hooks=(("mlp.hook_pre", "its MLP has no pre-activation"),)),
    )
    m = load_model(llama_dir)
    assert "blocks.0.mlp.hook_pre" not in m.hook_names() and "blocks.0.mlp.hook_post" in m.hook_names()
    ids = random_ids()
    for call in (
        lambda: m.run_with_cache(ids, ["blocks.0.mlp.hook_pre"]),
        lambda: m.forward(ids, interventions=[Intervention("blocks.1.mlp.hook_pre", lambda a, c: a)]),
        lambda: m.run_with_hooks(ids, fwd_hooks=[("blocks.0.mlp.hook_pre", lambda a, h: a)]),
    ):
        with pytest.raises(InputError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "mlp.hook_pre" in msg and "llama" in msg
    _, cache = m.run_with_cache(ids, lambda n: "mlp" in n)  # a predicate only sees what exists
    assert not any(n.endswith("hook_pre") for n in cache) and len(cache) == 2 * m.shape.n_layers


# -- model(ids), tokens ------------------------------------------------------------------------------------------------
def test_calling_the_model_returns_the_logits(pair):
    _, models = pair
    ids = random_ids(length=8)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    for b, m in models.items():
        got = m(ids)
        assert isinstance(got, torch.Tensor), b
        assert torch.equal(got, m.forward(ids).logits), b
        assert torch.equal(m(ids, attention_mask=mask), m.forward(ids, attention_mask=mask).logits), b
        assert m(ids, logits_to_keep=1).shape == (2, 1, m.shape.d_vocab), b


def test_to_tokens_and_to_str_tokens(pair):
    _, models = pair
    m = models["nnsight"]
    tok = m.tokenizer
    text = "Question: What is the capital of France?\nAnswer: Paris"
    toks = m.to_tokens(text)
    assert toks.shape[0] == 1 and toks[0, 0].item() == tok.bos_token_id
    assert toks[0, 1:].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert m.to_tokens(text, prepend_bos=False)[0].tolist() == toks[0, 1:].tolist()
    assert m.to_tokens(tok.bos_token + text)[0].tolist().count(tok.bos_token_id) == 1  # no double BOS
    strs = m.to_str_tokens(text, prepend_bos=False)
    assert "".join(strs) == text and len(strs) == toks.shape[1] - 1
    assert m.to_str_tokens(text)[0] == tok.bos_token
    assert m.to_str_tokens(toks) == m.to_str_tokens(text) == m.to_str_tokens(toks[0].tolist())
    assert m.to_string(toks[0, 1:]) == text
    short = m.to_tokens("a fox", prepend_bos=False)[0]
    n = len(short)
    batch = m.to_tokens(["a fox", text], prepend_bos=False)
    assert batch.shape == (2, toks.shape[1] - 1) and batch[0, :n].tolist() == short.tolist()
    assert (batch[0, n:] == m.pad_token_id).all()
    left = m.to_tokens(["a fox", text], padding_side="left", prepend_bos=False)
    assert (left[0, :-n] == m.pad_token_id).all() and left[0, -n:].tolist() == short.tolist()
    assert m.to_str_tokens(["a fox", text], prepend_bos=False)[1] == strs
    # text goes straight into the model, run_with_cache and run_with_hooks (BOS as to_tokens)
    assert torch.equal(m(text), m(toks))
    assert torch.equal(m.run_with_cache(text, ["hook_embed"])[0], m(toks))
    assert torch.equal(m.run_with_hooks(text), m(toks))
    padded = m(["a fox", text])  # a padded list of texts gets its attention mask: padding does not leak in
    assert _max(padded[0, : n + 1], m("a fox")[0]) <= 1e-4


# -- docs/hooks.md runs as written -------------------------------------------------------------------------------------
def test_docs_hooks_md_python_blocks_run_as_written(tmp_path):
    """Each python block of docs/hooks.md, saved as a script (nnsight's ``trace`` reads its source back from the
    file), runs as written on the tiny model."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 5
    for i, code in enumerate(blocks):
        assert 'load_model("tiny"' in code, f"block {i} of docs/hooks.md does not load the tiny model"
        script = tmp_path / f"hooks_md_block_{i}.py"
        script.write_text(code)
        runpy.run_path(str(script), run_name="__main__")
