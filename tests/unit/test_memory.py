"""Memory formulas (``unpact_mech/models/memory.py``), the ``scripts/memory_table.py`` script and the tables of
docs/bigger_models.md: parameter counts equal the HF models' exactly, byte terms equal hand-computed values, the
activation estimate equals the bytes autograd saves on tiny models, and the docs' tables are the script's output."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from unpact_mech.models import memory as M

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bigger_models.md"

#: A 2-layer Llama-style config small enough to count by hand: d=8, H=2, H_kv=1, d_h=4, d_mlp=12, V=10, untied.
TWO_LAYER = {
    "model_type": "llama",
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 12,
    "vocab_size": 10,
    "tie_word_embeddings": False,
}


def hf_configs():
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    base = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
    )
    gpt2 = dict(vocab_size=97, n_embd=48, n_layer=2, n_head=6, n_positions=33)
    return {
        "llama": lambda: LlamaConfig(**base),
        "llama_tied": lambda: LlamaConfig(**base, tie_word_embeddings=True),
        "llama_biases": lambda: LlamaConfig(**base, attention_bias=True, mlp_bias=True),
        "llama_head_dim": lambda: LlamaConfig(**base, head_dim=12),
        "qwen2": lambda: Qwen2Config(**base),
        "qwen2_tied": lambda: Qwen2Config(**base, tie_word_embeddings=True),
        "mistral": lambda: MistralConfig(**base),
        "phi3": lambda: Phi3Config(**base, pad_token_id=0),
        "gpt_neox": lambda: GPTNeoXConfig(**{k: v for k, v in base.items() if k != "num_key_value_heads"}),
        "gpt2": lambda: GPT2Config(**gpt2),
        "gpt2_n_inner": lambda: GPT2Config(**gpt2, n_inner=100),
    }


# -- parameters ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(hf_configs()))
def test_parameter_count_equals_the_hf_model(kind):
    from transformers import AutoModelForCausalLM

    config = hf_configs()[kind]()
    model = AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in model.parameters())  # tied tensors once
    assert M.count_parameters(M.dims_from_config(config)) == expected
    assert M.count_parameters(M.dims_from_config(config.to_dict())) == expected  # a config.json dict too


def test_two_layer_llama_counted_by_hand():
    dims = M.dims_from_config(TWO_LAYER)
    assert (dims.d_head, dims.n_kv_heads, dims.gated_mlp, dims.norm) == (4, 1, True, "rms")
    # embedding 10*8; per layer: q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192, MLP 3*8*12 = 288, two RMS norms 2*8 = 16
    assert M.parameter_counts(dims) == {
        "embedding": 80,
        "attention": 2 * 192,
        "mlp": 2 * 288,
        "norms": 5 * 8,
        "unembedding": 80,
    }
    assert M.count_parameters(dims) == 80 + 2 * (192 + 288 + 16) + 8 + 80 == 1160
    tied = M.dims_from_config({**TWO_LAYER, "tie_word_embeddings": True})
    assert M.count_parameters(tied) == 1160 - 80


def test_two_layer_gpt2_counted_by_hand():
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=10, n_embd=8, n_layer=2, n_head=2, n_positions=6, n_inner=16)
    # wte 10*8 + wpe 6*8; per layer: ln_1 2*8, c_attn 8*24+24, c_proj 8*8+8, ln_2 2*8, c_fc 8*16+16, c_proj 16*8+8
    per_layer = 16 + 216 + 72 + 16 + 144 + 136
    by_hand = 80 + 48 + 2 * per_layer + 16  # + ln_f; lm_head tied
    assert by_hand == 1344
    assert M.count_parameters(M.dims_from_config(config)) == by_hand
    assert sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) == by_hand


@pytest.mark.parametrize(
    ("name", "exact", "billions"),
    [
        ("Llama-3.2-1B", 1_235_814_400, 1.24),
        ("Llama-3.2-3B", 3_212_749_824, 3.21),
        ("Llama-2-7B", 6_738_415_616, 6.74),
        ("Llama-3.1-8B", 8_030_261_248, 8.03),
    ],
)
def test_public_configs_have_their_published_sizes(name, exact, billions):
    n = M.count_parameters(M.dims_from_config(M.PUBLIC_CONFIGS[name]))
    assert n == exact
    assert round(n / 1e9, 2) == billions


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="model type 'gemma2'"):
        M.dims_from_config({"model_type": "gemma2"})
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        M.dims_from_config({k: v for k, v in TWO_LAYER.items() if k != "tie_word_embeddings"})
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        M.weight_bytes(10, "int8")


# -- bytes -----------------------------------------------------------------------------------------------------------
def test_state_bytes_by_hand():
    assert (M.weight_bytes(1000, "fp32"), M.weight_bytes(1000, "bf16"), M.weight_bytes(1000, "fp16")) == (
        4000,
        2000,
        2000,
    )
    assert M.gradient_bytes(300, "fp32") == 1200 and M.gradient_bytes(300, "bf16") == 600
    assert M.adamw_state_bytes(1000, "fp32") == 8000  # two float32 moments
    assert M.adamw_state_bytes(1000, "bf16") == 12000  # + the float32 master copy
    assert M.adamw_state_bytes(1000, "bf16", master_copy=False) == 8000
    assert M.reference_bytes(1000, "bf16") == 2000 and M.snapshot_bytes(300, "fp32") == 1200
    dims = M.dims_from_config(TWO_LAYER)
    # 2 (k, v) * 2 layers * 3 sequences * 5 tokens * 1 kv head * 4 dims * 4 bytes
    assert M.kv_cache_bytes(dims, 3, 5, "fp32") == 2 * 2 * 3 * 5 * 1 * 4 * 4 == 960
    assert M.kv_cache_bytes(dims, 3, 5, "bf16") == 480


def test_activation_bytes_by_hand():
    dims = M.dims_from_config(TWO_LAYER)  # d=8, H=2, H_kv=1, d_h=4, d_mlp=12, V=10; T=5, B=3
    # fp32, per token: RMS norm 4*8 (float32 input) + 4*8 (normalised) + 4*8 (output) + 4 (1/rms) = 100
    assert M.norm_activation_bytes(dims, "fp32") == 100
    # attention: q 4*8 + k, v repeated to 2 heads 2*4*8 + softmax (float32) 4*2*5 + z 4*8 = 168
    assert M.attention_activation_bytes(dims, 5, "fp32") == 32 + 64 + 40 + 32 == 168
    assert M.attention_activation_bytes(dims, 5, "fp32", eager_attention=False) == 4 * (2 + 2) * 4 + 4 * 8 == 96
    # gated MLP: 4 tensors of 12 at 4 bytes
    assert M.mlp_activation_bytes(dims, "fp32") == 192
    layer = 2 * 100 + 168 + 192
    assert M.layer_activation_bytes(dims, 5, "fp32") == layer == 560
    head = 100 + 4 * 10  # final norm + float32 log-softmax
    assert M.head_activation_bytes(dims, "fp32") == head == 140
    assert M.activation_bytes(dims, 3, 5, "fp32") == 15 * 2 * layer + 15 * head == 18900
    # checkpointed: each layer's input (8 floats) + one layer recomputed + the head
    assert M.activation_bytes(dims, 3, 5, "fp32", checkpointing=True) == 15 * (2 * 4 * 8 + layer) + 15 * head == 11460
    assert M.activation_bytes(dims, 3, 5, "fp32", logit_tokens=1) == 15 * 2 * layer + 3 * head
    # bf16: norm 4*8 + 2*2*8 + 4 = 68; attention q 16 + k, v 32 + softmax float32 40 + its bf16 copy 20 + z 16 = 124;
    # MLP 4*2*12 = 96; layer 2*68 + 124 + 96 = 356; head 68 + 40 = 108
    assert M.layer_activation_bytes(dims, 5, "bf16") == 356
    assert M.activation_bytes(dims, 3, 5, "bf16") == 15 * 2 * 356 + 15 * 108 == 12300


def test_mlp_saved_tensors_by_family():
    from transformers import GPT2Config, GPTNeoXConfig

    assert M.dims_from_config(TWO_LAYER).mlp_saved == 4  # SwiGLU
    assert M.dims_from_config(GPT2Config()).mlp_saved == 5  # gelu_new, written in Python
    assert M.dims_from_config(GPTNeoXConfig()).mlp_saved == 2  # the GELU kernel
    assert not M.dims_from_config(GPT2Config()).softmax_fp32


def saved_activation_bytes(model, ids) -> int:
    """Bytes of the floating-point tensors autograd saves for the backward of ``log_softmax(logits)`` (each storage
    once, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.is_floating_point():
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.log_softmax(model(ids).logits.float(), -1)
    return sum(seen.values())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_activation_estimate_equals_what_autograd_saves(kind, dtype):
    """Within 0.6 % of the saved tensors of a forward (the rest: rotary tables, token ids, CPU layer-norm
    statistics in bf16); the same estimate without the eager-attention terms is off by far more."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    sizes = dict(vocab_size=97, hidden_size=64, intermediate_size=176, num_attention_heads=4)
    config = {
        "llama": lambda: LlamaConfig(**sizes, num_hidden_layers=3, num_key_value_heads=2, tie_word_embeddings=False),
        "qwen2": lambda: Qwen2Config(**sizes, num_hidden_layers=2, num_key_value_heads=1, tie_word_embeddings=True),
        "gpt2": lambda: GPT2Config(vocab_size=97, n_embd=64, n_layer=3, n_head=4, n_positions=64),
    }[kind]()
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch_dtype).eval()
    dims = M.dims_from_config(config)
    for batch, seq in ((2, 16), (3, 40)):
        ids = torch.randint(0, 97, (batch, seq))
        measured = saved_activation_bytes(model, ids)
        estimate = M.activation_bytes(dims, batch, seq, dtype)
        assert abs(measured - estimate) / measured < 0.006, (measured, estimate)
    sdpa = M.activation_bytes(dims, batch, seq, dtype, eager_attention=False)  # no probabilities, no repeated k, v
    assert abs(measured - sdpa) / measured > 0.05  # so the check can tell the eager terms apart


def test_reference_methods_are_the_ones_that_copy_the_model(monkeypatch, tiny_model, synthetic_items):
    """Every registered method's setup, run on tiny: exactly the REFERENCE_METHODS call ``reference_copy``."""
    from tests.unit.unlearning.conftest import TINY_RUNS
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.unlearning import UNLEARNING_METHODS, get_unlearning_method
    from unpact_mech.unlearning.batches import UnlearningSet

    calls: list[str] = []
    real = HookedLM.reference_copy

    def recording(self, *args, **kwargs):
        calls.append("copy")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HookedLM, "reference_copy", recording)
    copying = []
    for name in UNLEARNING_METHODS:
        method = get_unlearning_method(name, **TINY_RUNS.get(name, {}).get("hyperparameters", {}))
        data = UnlearningSet.from_items(tiny_model, synthetic_items, with_retain=method.needs_retain)
        calls.clear()
        method.setup(tiny_model, data, seed=0)
        method.teardown()
        if calls:
            copying.append(name)
    assert sorted(copying) == sorted(M.REFERENCE_METHODS)


# -- the table, the script, the docs ---------------------------------------------------------------------------------
def test_memory_table_rows_and_commands():
    table = M.memory_table(M.PUBLIC_CONFIGS, ["fp32", "bf16"], batch=8, seq=128)
    assert list(table.columns) == ["model", "dtype", "params_billion", *M.TABLE_COLUMNS]
    assert len(table) == 8 and list(table["dtype"][:2]) == ["fp32", "bf16"]
    row = table.iloc[0]  # Llama-3.2-1B, fp32
    assert row["model"] == "Llama-3.2-1B" and round(row["params_billion"], 2) == 1.24
    assert row["weights"] == pytest.approx(1_235_814_400 * 4 / 2**30)
    assert row["evaluate"] == pytest.approx(row["weights"] + row["kv_cache"])
    assert row["attribute"] == pytest.approx(row["weights"] + row["activations"])
    states = row["weights"] + row["grads"] + row["adamw"] + row["snapshot"] + row["reference"]
    assert row["unlearn"] == pytest.approx(states + row["activations"])
    assert row["unlearn_ckpt"] == pytest.approx(states + row["activations_ckpt"])
    assert row["adamw"] == pytest.approx(2 * row["weights"])  # fp32: 8 bytes per parameter
    bf16 = table.iloc[1]
    assert bf16["adamw"] == pytest.approx(6 * bf16["weights"])  # bf16: 12 bytes per 2-byte parameter
    no_ref = M.memory_table({"x": TWO_LAYER}, ["fp32"], 1, 4, reference=False)
    assert no_ref["reference"].item() == 0


def test_format_table():
    table = M.memory_table({"two": TWO_LAYER}, ["fp32"], 1, 4)
    md = M.format_table(table, "markdown").splitlines()
    assert md[0].startswith("| model | dtype | params_billion | weights |") and md[1].startswith("| --- | --- | ---: |")
    assert md[2].startswith("| two | fp32 | 0.00 |")
    csv = M.format_table(table, "csv").splitlines()
    assert csv[0].startswith("model,dtype,params_billion,weights") and csv[1].startswith("two,fp32,0.00,")
    with pytest.raises(ValueError, match="markdown"):
        M.format_table(table, "html")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("memory_table_script", ROOT / "scripts" / "memory_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_help_and_output(script, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        script.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--batch", "--seq", "--format", "--config"))
    assert script.main(["--batch", "2", "--seq", "64", "--format", "csv", "--models", "Llama-2-7B"]) == 0
    expected = M.format_table(M.memory_table({"Llama-2-7B": M.PUBLIC_CONFIGS["Llama-2-7B"]}, batch=2, seq=64), "csv")
    assert capsys.readouterr().out == expected
    own = tmp_path / "my-model"
    own.mkdir()
    (own / "config.json").write_text(json.dumps(TWO_LAYER))
    assert script.main(["--config", str(own / "config.json"), "--dtypes", "bf16", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("my-model,bf16,")
    assert script.main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--seq", "0"])


def docs_tables() -> list[tuple[str, str]]:
    """``(command, table)`` for every table of docs/bigger_models.md marked as generated by the script."""
    text = DOC.read_text()
    found = re.findall(r"<!-- generated by: (python scripts/memory_table\.py[^>]*?) -->\n((?:\|.*\n)+)", text)
    return [(command, table) for command, table in found]


def test_docs_tables_are_the_scripts_output(script, capsys):
    tables = docs_tables()
    assert len(tables) == 2, "docs/bigger_models.md should hold the two generated tables"
    text = DOC.read_text()
    for command, table in tables:
        assert f"```bash\n{command}\n```" in text, f"the docs should show (and so run) {command!r}"
        argv = shlex.split(command)[2:]
        assert script.main(argv) == 0
        assert capsys.readouterr().out == table, f"stale table for {command!r}: rerun it and paste its output"


def test_docs_numbers_quoted_in_the_text():
    """The prose quotes the 8B fp32 activations at 1024 tokens with and without checkpointing."""
    row = M.memory_table({"8B": M.PUBLIC_CONFIGS["Llama-3.1-8B"]}, ["fp32"], 8, 1024).iloc[0]
    text = DOC.read_text()
    assert f"from {row['activations']:.0f} to {row['activations_ckpt']:.0f} GiB in fp32" in text
    assert "within 0.6 %" in text
