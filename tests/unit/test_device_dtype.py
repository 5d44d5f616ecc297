"""``--device`` / ``--dtype`` and ``load_model(device=, dtype=)``: name resolution against the machine, bfloat16 on
the ``tiny`` model against float32, every model-loading command under ``--device cpu --dtype bfloat16``, the
one-line errors, and unlearning in a half precision through float32 master weights."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cli_helpers import run_cli
from unpact_mech import load_model
from unpact_mech.errors import InputError
from unpact_mech.models.device import device_problem, dtype_name, resolve_device, resolve_dtype
from unpact_mech.scoring import evaluate_items
from unpact_mech.scoring.batching import left_pad
from unpact_mech.scoring.tokens import encode_items
from unpact_mech.unlearning.precision import MasterWeights


def test_device_names_resolve_against_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("unpact_mech.models.device._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(InputError, match=r"^--device cuda: CUDA is not available on this machine"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="MPS is not available"):
        resolve_device("mps")
    for bad in ("gpu", "cpu:1", "cuda:x", ""):
        assert device_problem(bad).startswith("expected auto, cpu, cuda, cuda:N or mps"), bad
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match="this machine has 2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("unpact_mech.models.device._mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_dtype_names():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("Float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32 and dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(InputError, match="expected one of float32, bfloat16, float16"):
        resolve_dtype("int8")
    with pytest.raises(InputError):
        resolve_dtype(torch.float64)


@pytest.fixture(scope="module")
def tiny_pair():
    return load_model("tiny"), load_model("tiny", device="cpu", dtype="bfloat16")


def test_bfloat16_tiny_matches_float32_logits_and_greedy_answers(tiny_pair, synthetic_items):
    """Logits within 2e-2 of float32 relative to the logit scale (|dz| <= 2e-2 max|z|: an absolute 2e-2 is below
    bfloat16's own rounding of a logit of 13, 13 * 2^-8 = 0.05) and the same greedy answers on every synthetic fact;
    the scores are float32 in both."""
    f32, bf16 = tiny_pair
    assert f32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16} and bf16.device == torch.device("cpu")
    enc = encode_items(f32, synthetic_items)
    batch = left_pad([e.prompt.ids for e in enc], f32.pad_token_id, list(range(len(enc))))
    with torch.no_grad():
        z32 = f32.forward(batch.input_ids, attention_mask=batch.attention_mask).logits
        z16 = bf16.forward(batch.input_ids, attention_mask=batch.attention_mask).logits
    assert z16.dtype == torch.bfloat16
    real = batch.attention_mask.bool()
    gap = (z32 - z16.float()).abs()[real].max()
    assert 0 < gap <= 2e-2 * z32[real].abs().max(), float(gap)
    a = evaluate_items(f32, synthetic_items, progress=False)
    b = evaluate_items(bf16, synthetic_items, progress=False)
    assert a["generation"].tolist() == b["generation"].tolist()
    assert b["logprob"].dtype == "float64" and (a["logprob"] - b["logprob"]).abs().max() < 0.05


def test_integrated_gradients_in_bfloat16_accumulate_in_float32(tiny_pair, synthetic_items):
    from unpact_mech.attribution import integrated_gradients

    f32, bf16 = tiny_pair
    a = integrated_gradients(f32, synthetic_items[0], steps=16)
    b = integrated_gradients(bf16, synthetic_items[0], steps=16)
    assert b.scores.dtype == torch.float32 and b.position_scores.dtype == torch.float32
    assert abs(b.details["completeness_rel"]) < 0.05
    assert torch.allclose(a.scores, b.scores, atol=0.05 * float(a.scores.abs().max()))


def test_master_weights_keep_updates_that_bfloat16_rounds_away():
    """AdamW steps of ~1e-3 on a bfloat16 weight of 1.0 (half an ulp there is 2^-9 ~ 0.002): stepped directly the
    weight never moves; through float32 masters 50 steps move it to ~0.95 (float32 moments)."""
    direct = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    mixed = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    masters = MasterWeights([mixed])
    assert MasterWeights.needed([mixed]) and not MasterWeights.needed([torch.nn.Parameter(torch.ones(2))])
    opt_direct = torch.optim.AdamW([direct], lr=1e-3, weight_decay=0.0)
    opt_mixed = torch.optim.AdamW(masters.masters, lr=1e-3, weight_decay=0.0)
    for _ in range(50):
        direct.grad = torch.ones_like(direct)
        opt_direct.step()
        mixed.grad = torch.ones_like(mixed)
        masters.grads_to_masters()
        assert mixed.grad is None and masters.masters[0].grad.dtype == torch.float32
        opt_mixed.step()
        masters.masters_to_params()
    assert torch.equal(direct, torch.ones_like(direct))
    assert opt_mixed.state[masters.masters[0]]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(masters.masters[0], torch.full((4,), 0.95), atol=1e-3, rtol=0)
    torch.testing.assert_close(mixed.float(), torch.full((4,), 0.95), atol=4e-3, rtol=0)


def test_unlearning_in_bfloat16_moves_the_weights_as_float32_does(synthetic_items, monkeypatch):
    """ga_gdr on tiny with its recipe (8 steps at lr 1e-5: per-weight steps below bfloat16's resolution): the
    bfloat16 run's weight change is within 20% of the float32 run's (measured 0.024 vs 0.026); without master weights
    bfloat16 rounding swallows most of it (0.009, the reason they exist)."""
    from unpact_mech.unlearning import unlearn

    def delta(dtype: str) -> float:
        model = load_model("tiny", dtype=dtype)
        result = unlearn(model, synthetic_items, "ga_gdr", steps=8, lr=1e-5, evaluate=False, progress=False, seed=0)
        return float(result.summary["weight_delta_norm"])

    full, half = delta("float32"), delta("bfloat16")
    monkeypatch.setattr(MasterWeights, "needed", staticmethod(lambda params: False))
    naive = delta("bfloat16")
    assert abs(half - full) < 0.2 * full, (half, full)
    assert naive < 0.5 * full, (naive, full)


def test_cuda_on_a_machine_without_it_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    code, _, err = run_cli(["evaluate", "--model", "tiny", "--device", "cuda", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--device: CUDA is not available on this machine" in err and not out.exists()


def test_an_unsupported_architecture_is_one_line_naming_it(tmp_path, capsys):
    model_dir = tmp_path / "gemma"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}))
    (model_dir / "model.safetensors").write_bytes(b"")
    code, _, err = run_cli(["evaluate", "--model", model_dir, "--data", "builtin:synthetic_facts", "--out",
                            tmp_path / "o"], capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Gemma2ForCausalLM" in err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def unlearned_bf16(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "unlearned"
    argv = ["unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "ga_gdr", "--steps", "2"]
    code = run_cli_plain([*argv, "--device", "cpu", "--dtype", "bfloat16", "--out", out, "--quiet"])
    assert code == 0
    return out


def run_cli_plain(argv) -> int:
    from unpact_mech.cli import main

    return main([str(a) for a in argv])


@pytest.mark.parametrize("command", ["evaluate", "attribute", "unlearn", "recover", "demo"])
def test_every_command_runs_on_cpu_in_bfloat16(command, unlearned_bf16, tmp_path, capsys):
    """Each model-loading command takes ``--device cpu --dtype bfloat16`` and records both in run.json; the
    unlearned model directory it writes holds bfloat16 weights."""
    out = tmp_path / "out"
    data = ["--data", "builtin:synthetic_facts"]
    argv = {
        "evaluate": ["evaluate", "--model", "tiny", *data],
        "attribute": ["attribute", "--model", "tiny", "--method", "occlusion", *data],
        "unlearn": None,  # the fixture ran it
        "recover": [
            "recover",
            "--original",
            "tiny",
            "--unlearned",
            unlearned_bf16,
            *data,
            "--attack",
            "focus",
            "scale",
        ],  # fmt: skip
        "demo": ["demo", "--model", "tiny", "--methods", "ga_gdr", "--battery", "none", "--layer-items", "2"],
    }[command]
    if argv is None:
        out = unlearned_bf16
    else:
        code, _, err = run_cli([*argv, "--device", "cpu", "--dtype", "bfloat16", "--out", out, "--quiet"], capsys)
        assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    config = record.get("config", record)
    assert config.get("dtype") == "bfloat16" and config.get("device") == "cpu", config
    if command == "unlearn":
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as fh:
            assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}  # noqa: SIM118
        assert load_model(out).dtype == torch.float32  # loaded as asked (float32 by default), not as stored


def test_device_map_loads_where_a_single_process_runs_it(tmp_path, capsys, synthetic_items):
    """``device_map="auto"`` goes through Hugging Face's big-model placement; without a GPU it places everything on
    the CPU and the answers and scores are the plain load's; with ``--device cpu`` it is refused in one line."""
    plain, mapped = load_model("tiny"), load_model("tiny", device_map="auto")
    a = evaluate_items(plain, synthetic_items[:8], progress=False)
    b = evaluate_items(mapped, synthetic_items[:8], progress=False)
    assert a["generation"].tolist() == b["generation"].tolist() and (a["logprob"] - b["logprob"]).abs().max() < 1e-6
    with pytest.raises(InputError, match="expected one of auto, balanced, sequential"):
        load_model("tiny", device_map="everywhere")
    capsys.readouterr()  # the loads' progress output
    code, _, err = run_cli(["evaluate", "--model", "tiny", "--device", "cpu", "--device-map", "auto", "--out",
                            tmp_path / "o"], capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "use it with --device auto or cuda" in err
    assert not (tmp_path / "o").exists()
