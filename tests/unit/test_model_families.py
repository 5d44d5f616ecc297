"""Model families: a tiny random config of every supported architecture, saved as a local HF directory and loaded
through both backends — Llama, Qwen2 (q/k/v biases), Mistral (a sliding window shorter than the prompts), Phi-3 (fused
``qkv_proj`` and ``gate_up_proj``, partial rotary), GPT-NeoX (fused per-head ``query_key_value``, parallel attention
and MLP, partial rotary, ``lm_head``) and GPT-2. Per family: logits equal the plain HF forward; every hook of
``hook_names()`` caches the same activation on both backends and satisfies the vocabulary's identities; edits at every
hook kind change the logits identically; greedy decoding equals HF's; the attribution sum rules hold; gradients and
weight updates reach the HF parameters through both backends; one step of every unlearning method changes every
weight it trains. Families the pinned libraries run but whose numbers are not kept exact (Gemma 2) are a one-line
InputError naming the architecture.
"""

from __future__ import annotations

import gc

import pytest
import torch

from tests.conftest import BACKENDS, load_hf, random_ids
from unpact_mech import load_model
from unpact_mech.data.record import QAItem
from unpact_mech.errors import InputError
from unpact_mech.models.arch import SUPPORTED_ARCHITECTURES, architecture_for
from unpact_mech.models.hooks import BLOCK_KINDS, Intervention, add_vector, hook_name, positions_to_mask

FAMILIES = ("llama", "qwen2", "mistral", "phi3", "gpt_neox", "gpt2")
ITEMS = [  # in the vocabulary of the tests' BPE tokenizer
    QAItem("france", "What is the capital of France?", "Paris", keywords=("capital", "France"), split="forget"),
    QAItem("hamlet", "Who wrote Hamlet in London?", "William Shakespeare", keywords=("Hamlet",), split="retain"),
]
TOL = 1e-5


def _config(family: str, special: dict):
    import transformers as T

    common = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64
    )
    if family == "gpt2":
        dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return T.GPT2LMHeadModel, T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **dropout, **special)
    if family == "gpt_neox":  # parallel attention + MLP, a quarter of each head rotated (Pythia's defaults)
        return T.GPTNeoXForCausalLM, T.GPTNeoXConfig(**common, **special)
    cls, cfg_cls, extra = {
        "llama": (T.LlamaForCausalLM, T.LlamaConfig, {}),
        "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config, {}),
        "mistral": (T.MistralForCausalLM, T.MistralConfig, {"sliding_window": 3}),  # shorter than every prompt
        "phi3": (T.Phi3ForCausalLM, T.Phi3Config, {"partial_rotary_factor": 0.5}),
    }[family]
    return cls, cfg_cls(**common, num_key_value_heads=2, **extra, **special)


def _save_random(family: str, tokenizer_dir, out_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = dict(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    cls, config = _config(family, special)
    torch.manual_seed(0)
    model = cls(config)
    with torch.no_grad():  # sharper than HF's init, and random biases and norm weights (HF starts them at 0 / 1)
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
            else:
                p.add_(0.2 * torch.randn(p.shape))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory, tokenizer_dir):
    """(directory, plain HF model, {backend: HookedLM}) of one family's tiny random model."""
    directory = _save_random(request.param, tokenizer_dir, tmp_path_factory.mktemp(request.param))
    models = {b: load_model(directory, backend=b) for b in BACKENDS}
    assert models["nnsight"].arch.family == request.param
    return directory, load_hf(directory), models


def _max(a, b) -> float:
    return (a - b).abs().max().item()


def test_logits_equal_the_plain_hf_forward(family):
    _, hf, models = family
    ids = random_ids(length=9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 left-padded
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        alone = hf(input_ids=ids[1:, 3:]).logits
    for b, m in models.items():
        assert _max(m.forward(ids).logits, ref) <= TOL, b
        assert _max(m.forward(ids, attention_mask=mask).logits[1, 3:], alone[0]) <= 1e-4, b


def test_every_hook_is_cached_identically_and_keeps_the_vocabulary_identities(family):
    _, _, models = family
    ids = random_ids(length=9)
    out = {b: m.run_with_cache(ids) for b, m in models.items()}
    names = models["nnsight"].hook_names()
    a, c = out["transformer_lens"][1], out["nnsight"][1]
    assert set(a) == set(c) == set(names)
    for name in names:
        assert a[name].shape == c[name].shape, name
        assert _max(a[name], c[name]) <= TOL, name

    m, logits = models["nnsight"], out["nnsight"][0]
    s, W = m.shape, m.weights
    group = s.n_heads // s.n_kv_heads
    for L in range(s.n_layers):
        at = lambda kind, L=L: c[hook_name(L, kind)]
        assert at("attn.hook_q").shape == (2, 9, s.n_heads, s.d_head)
        assert at("attn.hook_k").shape == at("attn.hook_v").shape == (2, 9, s.n_kv_heads, s.d_head)
        # the scores follow from the (rotated) q and k: q·k / sqrt(d_head) wherever the mask lets a key through
        k = at("attn.hook_k").repeat_interleave(group, dim=2)
        qk = torch.einsum("bqhd,bkhd->bhqk", at("attn.hook_q"), k) * s.d_head**-0.5
        scores = at("attn.hook_attn_scores")
        visible = scores > torch.finfo(scores.dtype).min / 2
        assert torch.allclose(qk[visible], scores[visible], atol=1e-4)
        assert torch.allclose(scores.softmax(-1), at("attn.hook_pattern"), atol=1e-6)
        # z is pattern @ v per head; z @ W_O (+ b_O) is attn_out; hook_post @ W_out (+ b_out) is mlp_out
        v = at("attn.hook_v").repeat_interleave(group, dim=2)
        assert torch.allclose(torch.einsum("bhqk,bkhd->bqhd", at("attn.hook_pattern"), v), at("attn.hook_z"), atol=1e-5)
        b_O, b_out = W.b_O(L), W.b_out(L)
        attn_out = torch.einsum("bqhd,hdm->bqm", at("attn.hook_z"), W.W_O(L)) + (0 if b_O is None else b_O)
        assert torch.allclose(attn_out, at("hook_attn_out"), atol=1e-4)
        mlp_out = at("mlp.hook_post") @ W.W_out(L) + (0 if b_out is None else b_out)
        assert torch.allclose(mlp_out, at("hook_mlp_out"), atol=1e-4)
        # the residual stream decomposes exactly (resid_mid only where the block has one)
        resid_post = at("hook_resid_pre") + at("hook_attn_out") + at("hook_mlp_out")
        assert torch.allclose(resid_post, at("hook_resid_post"), atol=1e-5)
        if hook_name(L, "hook_resid_mid") in c:
            assert torch.allclose(at("hook_resid_pre") + at("hook_attn_out"), at("hook_resid_mid"), atol=1e-6)
    assert torch.allclose(c["ln_final.hook_normalized"] @ W.W_U, logits, atol=1e-4)


def test_edits_at_every_hook_kind_change_the_logits_identically(family):
    _, _, models = family
    ids = random_ids(length=9)
    base = models["nnsight"].forward(ids).logits
    names = [n for n in models["nnsight"].hook_names() if n.startswith("blocks.1.") or n == "ln_final.hook_normalized"]
    assert len(names) >= len(BLOCK_KINDS)
    for name in names:
        g = torch.Generator().manual_seed(2)

        if name.endswith("attn.hook_pattern"):

            def fn(act, ctx):  # halve the attention to key 1 and renormalise
                act = act.clone()
                act[..., 1] *= 0.5
                return act / act.sum(-1, keepdim=True)
        else:
            noise = {}

            def fn(act, ctx, noise=noise, g=g):
                if "x" not in noise:
                    noise["x"] = torch.randn(act.shape, generator=g)
                return act + noise["x"]

        out = {b: m.forward(ids, interventions=[Intervention(name, fn)]).logits for b, m in models.items()}
        assert _max(out["transformer_lens"], out["nnsight"]) <= TOL, name
        assert _max(out["nnsight"], base) > 1e-3, name


def test_a_head_ablation_and_an_added_vector_change_the_logits_identically(family):
    _, _, models = family
    ids = random_ids(length=9)
    vec = torch.randn(models["nnsight"].shape.d_model, generator=torch.Generator().manual_seed(1)) * 5

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    hooks = [("blocks.0.attn.hook_z", zero_head)]
    add = add_vector("blocks.1.hook_resid_post", positions_to_mask([[2], [2]], ids.shape[1]), vec)
    out = {}
    for b, m in models.items():
        base = m(ids)
        out[b] = m.run_with_hooks(ids, fwd_hooks=[*hooks, add])
        changed = (out[b] - base).abs().amax(-1)
        assert changed.min().item() > 1e-4, b  # the head ablation reaches every position
    assert _max(out["transformer_lens"], out["nnsight"]) <= TOL


def test_greedy_generation_equals_hf_generate(family):
    _, hf, models = family
    ids = random_ids(n_rows=2, length=6, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # row 1 is a 4-token prompt, left-padded
    with torch.no_grad():
        ref = [
            hf.generate(ids[r : r + 1, start:], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
            for r, start in ((0, 0), (1, 2))
        ]
    vec = torch.randn(models["nnsight"].shape.d_model, generator=torch.Generator().manual_seed(4)) * 20
    edit = add_vector("blocks.0.hook_resid_post", positions_to_mask([[1, 3]], 6), vec)
    for b, m in models.items():
        eos = m.hf.generation_config.eos_token_id
        m.hf.generation_config.eos_token_id = None
        try:
            got = m.generate(ids, mask, max_new_tokens=6)
            assert m.tokenizer.eos_token_id not in torch.cat(ref, 1).tolist()[0], "a random model emitted EOS"
            for r in range(2):
                assert got[r].tolist() == ref[r][0, -6:].tolist(), (b, r)
            # an edit at prompt positions: KV-cached decoding == recomputing the whole sequence each step
            cached = m.generate(ids[:1], max_new_tokens=6, interventions=[edit])[0]
            seq = ids[:1]
            for _ in range(6):
                nxt = m.forward(seq, interventions=[edit]).logits[0, -1].argmax()
                seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
            assert cached.tolist() == seq[0, 6:].tolist(), b
        finally:
            m.hf.generation_config.eos_token_id = eos


def test_attribution_sum_rules(family):
    from unpact_mech.attribution import (
        attention_paths,
        grad_x_input,
        integrated_gradients,
        occlusion,
        residual_contributions,
    )
    from unpact_mech.attribution.occlusion_set import occlusion_items
    from unpact_mech.scoring.tokens import encode_item

    _, hf, models = family
    for b, model in models.items():
        for item in ITEMS:
            enc = encode_item(model, item)
            seq = torch.tensor([list(enc.prompt.ids) + list(enc.answer_ids)])
            n, p = len(enc.answer_ids), len(enc.prompt.ids)
            with torch.no_grad():
                logits = hf(input_ids=seq).logits[0]
            want = float(logits[torch.arange(p - 1, p - 1 + n), torch.tensor(enc.answer_ids)].mean())
            # DLA: the components (embeddings, each layer's attention and MLP, the norm bias) sum to the answer logit
            res = residual_contributions(model, item)
            assert abs(res.readout_value - want) < 1e-4, (b, item.id)
            assert abs(float(res.values.sum()) - want) < 1e-4, (b, item.id, res.components)
            assert res.components.count("attn") == res.components.count("mlp") == model.shape.n_layers
            # attention paths: heads x source positions (+ the output bias) sum to the layer's direct contribution
            paths = attention_paths(model, item)
            attn = res.values[[i for i, comp in enumerate(res.components) if comp == "attn"]]
            assert torch.allclose(paths.contributions.sum((1, 2)) + paths.bias_terms, attn, atol=1e-4), b
    model = models["transformer_lens"]
    for item in ITEMS:
        # gradient x input is plain autograd on the HF module
        enc = encode_item(model, item)
        seq = torch.tensor([list(enc.prompt.ids) + list(enc.answer_ids)])
        emb = hf.get_input_embeddings()(seq).detach().requires_grad_(True)
        p, answer = len(enc.prompt.ids), torch.tensor(enc.answer_ids)
        lp = hf(inputs_embeds=emb).logits[0, p - 1 : p - 1 + len(answer)].log_softmax(-1)
        lp[torch.arange(len(answer)), answer].mean().backward()
        want = (emb.grad[0] * emb[0].detach()).sum(-1)[:p]
        assert torch.allclose(grad_x_input(model, item).position_scores, want, atol=1e-5)
        # integrated gradients: completeness (quadrature error only), the shared prefix changes nothing
        ig = integrated_gradients(model, item, steps=64)
        gap = ig.target_value - ig.details["f_baseline"]
        assert abs(float(ig.scores.sum()) - gap - ig.details["completeness_delta"]) < 1e-5
        assert abs(ig.details["completeness_delta"]) < 0.02 + 0.02 * abs(gap), ig.details
        alone = integrated_gradients(model, item, steps=8, share_prefix=False)
        shared = integrated_gradients(model, item, steps=8, share_prefix=True)
        assert torch.allclose(alone.position_scores, shared.position_scores, atol=1e-5)
    # occlusion: the data-set path (packed rows after a shared prefix where the family allows it) == item by item
    batched = [occlusion(model, item, batching="batched").scores for item in ITEMS]
    for got, want in zip(occlusion_items(model, ITEMS), batched):
        assert torch.allclose(got.scores, want, atol=1e-4)


def test_gradients_and_weight_updates_reach_the_hf_parameters(family):
    """Every parameter gets a gradient through both backends (TransformerLens' bridge splits fused projections into
    parameters of its own; they are tied back), and an in-place update of the HF parameters is what both run."""
    directory, _, models = family
    ids = random_ids(length=9)
    for b, m in models.items():
        m.forward(ids).logits.logsumexp(-1).mean().backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.any()]
        m.hf.zero_grad(set_to_none=True)
        assert not missing, (b, missing)
    m = models["transformer_lens"]
    saved = {n: t.clone() for n, t in m.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    try:
        m.load_state_dict({n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in saved.items()})
        ref = load_hf(directory)
        ref.load_state_dict(m.state_dict())
        with torch.no_grad():
            want = ref(input_ids=ids).logits
        for b, model in models.items():  # both wrap their own module; load the same update into the other one
            if model is not m:
                model.load_state_dict(m.state_dict())
            assert _max(model.forward(ids).logits, want) <= 1e-4, b
    finally:
        for model in models.values():
            model.load_state_dict(saved)


@pytest.fixture
def fast_gc():
    """The training loop ends with accelerate's ``free_memory`` (a full ``gc.collect``), which costs 0.4 s per run with
    the session's models alive; freezing them out of the collector keeps the ten runs per family fast."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("fast_gc")
def test_one_unlearning_step_of_each_method_changes_every_weight_it_trains(family):
    from unpact_mech.unlearning import UNLEARNING_METHODS, get_unlearning_method, unlearn
    from unpact_mech.unlearning.params import select_trainable

    _, _, models = family
    name_of_family = models["nnsight"].arch.family
    runs = [(method, "transformer_lens") for method in UNLEARNING_METHODS] + [("ga", "nnsight")]
    for method, backend in runs:
        model = models[backend]
        hp = {"layer": 1} if method == "rmu" else {"layer": 0, "late_layer": 1} if "keyguard" in method else None
        saved, lineage = {n: t.clone() for n, t in model.state_dict().items()}, list(model.lineage)
        try:
            unlearn(
                model, ITEMS, method, hyperparameters=hp, steps=1, lr=1e-3, target="gold", evaluate=False,
                progress=False,
            )  # fmt: skip
            trained = select_trainable(model, get_unlearning_method(method, **(hp or {})).default_trainable(model))
            after = model.state_dict()
            unchanged = [n for n in trained if after[n].dim() == 2 and torch.equal(after[n], saved[n])]
            assert trained and not unchanged, (method, backend, name_of_family, unchanged)
        finally:
            model.load_state_dict(saved)
            model.lineage = lineage


def test_parallel_blocks_have_no_resid_mid(family):
    _, _, models = family
    m = models["nnsight"]
    if m.arch.family != "gpt_neox":
        assert "blocks.0.hook_resid_mid" in m.hook_names()
        return
    assert "blocks.0.hook_resid_mid" not in m.hook_names()
    with pytest.raises(InputError, match="hook 'blocks.0.hook_resid_mid' does not exist on gpt_neox models"):
        m.run_with_cache(random_ids(), ["blocks.0.hook_resid_mid"])


def test_sequential_gpt_neox_keeps_resid_mid():
    from transformers import GPTNeoXConfig

    assert dict(architecture_for(GPTNeoXConfig()).missing_hooks) == {
        "hook_resid_mid": "attention and MLP both read resid_pre in a parallel block (use_parallel_residual)"
    }
    assert architecture_for(GPTNeoXConfig(use_parallel_residual=False)).missing_hooks == ()


def test_sliding_window_models_occlude_batched_only(family):
    from unpact_mech.attribution import occlusion

    _, _, models = family
    m = models["transformer_lens"]
    if m.arch.family != "mistral":
        return
    auto = occlusion(m, ITEMS[0])  # auto: batched on a sliding-window model
    assert torch.allclose(auto.scores, occlusion(m, ITEMS[0], batching="batched").scores)
    with pytest.raises(InputError, match="'packed' cannot run mistral's sliding-window attention"):
        occlusion(m, ITEMS[0], batching="packed")


def test_gemma2_is_a_one_line_error_naming_the_architecture(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Gemma2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    )  # fmt: skip
    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for backend in BACKENDS:
        with pytest.raises(InputError) as err:
            load_model(tmp_path, backend=backend)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith("architecture Gemma2ForCausalLM (model type 'gemma2') is not supported: ")
        assert "soft-capping" in message and message.endswith("supported: " + ", ".join(SUPPORTED_ARCHITECTURES))


def test_an_unknown_family_names_its_class_and_the_supported_ones():
    from transformers import BertConfig

    config = BertConfig(architectures=["BertForMaskedLM"])
    with pytest.raises(InputError, match=r"^architecture BertForMaskedLM \(model type 'bert'\) is not supported; "):
        architecture_for(config)
    assert SUPPORTED_ARCHITECTURES == (
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "MistralForCausalLM",
        "Phi3ForCausalLM",
        "GPTNeoXForCausalLM",
        "GPT2LMHeadModel",
    )
