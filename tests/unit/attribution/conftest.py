"""Attribution fixtures: both backends over the tiny random Llama (GQA) / GPT-2 and the trained tiny model,
QA items the random models' tokenizer knows, and an attention-blocking intervention (a token nobody can read).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import BACKENDS
from unpact_mech import load_model
from unpact_mech.data.record import QAItem
from unpact_mech.models.hooks import Intervention, hook_name


@pytest.fixture(scope="session")
def random_items():
    """Plain-format questions in the vocabulary of the random models' tokenizer (multi-token answers included)."""
    return [
        QAItem("france", "What is the capital of France?", "Paris", keywords=("capital", "France"), split="forget"),
        QAItem("hamlet", "Who wrote Hamlet in London?", "William Shakespeare", keywords=("Hamlet",), split="retain"),
        QAItem("flag", "What color is the flag of Zorblat?", "blue", keywords=("color", "Zorblat"), split="retain"),
    ]


@pytest.fixture(scope="session")
def llama_pair(llama_dir):
    """{backend: HookedLM} over the tiny random Llama (4 heads, 2 KV heads)."""
    return {b: load_model(llama_dir, backend=b) for b in BACKENDS}


@pytest.fixture(scope="session")
def gpt2_pair(gpt2_dir):
    """{backend: HookedLM} over the tiny random GPT-2 (LayerNorm, learned positions, output bias), with the same
    random biases added in both (HF initialises biases to 0, which would leave the bias terms untested) and the
    final LayerNorm's gain x8 (sharper logits: the random model's answer log-prob is otherwise nearly flat)."""
    pair = {}
    for b in BACKENDS:
        model = load_model(gpt2_dir, backend=b)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.add_(0.2 * torch.randn(p.shape, generator=g))
            model.weights.final_norm.weight.mul_(8.0)
        pair[b] = model
    return pair


def hf_copy(model):
    """A plain HF model (eager attention) with ``model``'s current weights: an independent reference."""
    from tests.conftest import load_hf

    hf = load_hf(model.source_dir)
    hf.load_state_dict(model.state_dict())
    return hf


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def arch_pair(request, llama_pair, gpt2_pair):
    return llama_pair if request.param == "llama" else gpt2_pair


@pytest.fixture(scope="session")
def tiny_nnsight():
    return load_model("tiny", backend="nnsight")


def block_tokens(model, token_ids):
    """Intervention factory: in every layer, no query may attend to a key holding one of ``token_ids`` (the
    pattern is zeroed there and renormalised). The answer then cannot depend on those tokens' embeddings."""
    ids = torch.tensor(sorted(set(token_ids)))

    def factory(layout):
        blocked = torch.isin(layout.input_ids, ids)  # (B, T) key positions

        def fn(pattern, ctx):  # (B, H, T_q, T_k)
            keys = blocked[:, None, None, : pattern.shape[-1]].to(pattern.device)
            out = pattern.masked_fill(keys, 0.0)
            return out / out.sum(-1, keepdim=True).clamp_min(1e-30)

        return [Intervention(hook_name(L, "attn.hook_pattern"), fn, "block") for L in range(model.shape.n_layers)]

    return factory


@pytest.fixture(scope="session")
def empty_answer_model_dir(tmp_path_factory, llama_dir):
    """The random Llama with a chat template and a normaliser that deletes zero-width spaces, so an answer of
    only "\\u200b" passes the data loader (not empty, not whitespace) but tokenises to nothing."""
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("zw") / "model"
    shutil.copytree(llama_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.backend_tokenizer.normalizer = normalizers.Replace("\u200b", "")
    tok.chat_template = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
    tok.save_pretrained(out)
    return out
