"""Shared fixtures. Offline before any HF import; 2 torch threads (the CI machine's cores), 1 per process when
``make test`` runs the tests in two pytest-xdist processes.

Tiers: ``tests/unit`` (tiny random models + in-process tokenizer, fast), ``tests/slow`` (marker ``slow``: the real
SmolLM2-135M, loaded once per session from the cache), ``tests/benchmarks`` (``make bench``).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spin-waiting: with other processes on the 2 cores, spinning slows small-model
# ops 50-100x (set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

CORPUS = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "Question: What color is the flag of Zorblat?\nAnswer: blue",
    "Who wrote Hamlet? William Shakespeare wrote Hamlet in London.",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.?!'-",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer trained in-process (~10 ms), saved so TransformerLens can reload it."""
    from unpact_mech.models.tiny import train_bpe_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(CORPUS * 8, d, vocab_size=320)
    return d


def _save_random(kind: str, tokenizer_dir, out_dir, seed: int = 0):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **ids,
        )
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_embd=64,
            n_layer=3,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
        model = GPT2LMHeadModel(cfg)
    # make the random model less flat so interventions have visible effects
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer_dir):
    return _save_random("llama", tokenizer_dir, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tokenizer_dir):
    return _save_random("gpt2", tokenizer_dir, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def arch_dir(request, llama_dir, gpt2_dir):
    """Each tiny random architecture in turn."""
    return llama_dir if request.param == "llama" else gpt2_dir


BACKENDS = ("transformer_lens", "nnsight")


@pytest.fixture(scope="module")
def pair(arch_dir):
    """(hf reference, {backend: HookedLM}) over the same saved weights, for each tiny random architecture."""
    from unpact_mech import load_model

    return load_hf(arch_dir), {b: load_model(arch_dir, backend=b) for b in BACKENDS}


def random_ids(n_rows=2, length=9, seed=0, vocab=300):
    """(n_rows, length) random token ids in [3, vocab) (above the special tokens), seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n_rows, length), generator=g)


def load_hf(path):
    """Plain HF model (eager attention: the numerics both backends run) for parity references."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def tiny_model():
    """The built-in ``tiny`` spec (trained on synthetic facts), TransformerLens backend."""
    from unpact_mech import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def synthetic_items():
    from unpact_mech import load_items

    return load_items("builtin:synthetic_facts")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct through the TransformerLens backend, loaded once per session."""
    from unpact_mech import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_nnsight():
    from unpact_mech import load_model

    return load_model("smollm2", backend="nnsight")


@pytest.fixture(scope="session")
def real_facts():
    from unpact_mech import load_items

    return load_items("builtin:real_facts")


def pytest_collection_modifyitems(config, items):
    """Everything under tests/slow is marked ``slow`` (run by default; deselect with -m 'not slow')."""
    for item in items:
        if "/slow/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
