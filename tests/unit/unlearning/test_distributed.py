"""The scale-out path is real: the loop under ``accelerate launch`` with 2 CPU processes (DDP over gloo).

``accelerate launch --cpu --num_processes 2`` starts ONE process on this machine (its CPU launcher needs mpirun for
more; it printed ``num_processes 1, DistributedType.NO``), so the test uses ``--multi_gpu``, whose torchrun launcher
falls back to gloo when there is no GPU (``DistributedType.MULTI_CPU``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_helpers import run_cli
from unpact_mech import load_items, load_model
from unpact_mech.distributed import check_training_launch, local_accelerator
from unpact_mech.errors import InputError
from unpact_mech.unlearning import unlearn

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, *extra: str) -> tuple[dict, dict]:
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(WORKER),
        str(out),
        *extra,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    w = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    return info, w


def test_two_processes_end_with_identical_weights_and_the_bypass_control_does_not(tmp_path):
    info, (w0, w1) = _launch(tmp_path / "ddp")
    assert [i["num_processes"] for i in info] == [2, 2]
    assert all(i["distributed_type"] == "DistributedType.MULTI_CPU" for i in info)
    base = dict(load_model("tiny").named_parameters())
    assert any(not torch.equal(w0[n], base[n].detach()) for n in w0)  # they trained
    assert all(torch.equal(w0[n], w1[n]) for n in w0)  # ... in sync
    assert info[0]["losses"] == info[1]["losses"]  # the logged loss is the mean over ranks

    # ... to the weights of ONE process accumulating the two ranks' micro-batches: rank r of step s draws slot 2s + r,
    # micro-batch m of step s with --grad-accum 2 draws slot 2s + m, and both average the two losses
    torch.set_num_threads(1)
    one = load_model("tiny")
    result = unlearn(
        one, load_items("builtin:synthetic_facts"), "ga_gdr", steps=3, lr=1e-3, batch_size=2, grad_accum=2,
        evaluate=False, progress=False,
    )  # fmt: skip
    ref = dict(one.named_parameters())
    assert all(torch.allclose(w0[n], ref[n].detach(), rtol=0, atol=1e-6) for n in w0)
    assert [r["loss"] for r in result.train.loss_log] == pytest.approx(info[0]["losses"], rel=1e-5)

    _, (c0, c1) = _launch(tmp_path / "bypass", "--bypass")
    assert any(not torch.equal(c0[n], c1[n]) for n in c0), "without the DDP forward the ranks must diverge"


def test_keyguard2_weight_passes_under_ddp_match_one_process_accumulating(tmp_path):
    """keyguard2 (steer rows fitted through the DDP wrapper, noise and quantization passes after the main backward,
    DDP's all-reduce on the step's last backward only): the ranks stay in sync and end at the weights of one process
    accumulating their two micro-batches."""
    info, (w0, w1) = _launch(tmp_path / "kg2", "--method", "keyguard2")
    assert all(torch.equal(w0[n], w1[n]) for n in w0) and info[0]["losses"] == info[1]["losses"]
    torch.set_num_threads(1)
    one = load_model("tiny")
    result = unlearn(
        one, load_items("builtin:synthetic_facts"), "keyguard2", steps=3, lr=1e-2, batch_size=2, grad_accum=2,
        hyperparameters={"layer": 0, "late_layer": 1, "c": 20.0, "alpha": 1.0}, evaluate=False, progress=False,
    )  # fmt: skip
    ref = dict(one.named_parameters())
    base = dict(load_model("tiny").named_parameters())
    assert any(not torch.equal(w0[n], base[n].detach()) for n in w0)  # they trained
    assert all(torch.allclose(w0[n], ref[n].detach(), rtol=0, atol=1e-5) for n in w0)
    assert [r["loss"] for r in result.train.loss_log] == pytest.approx(info[0]["losses"], rel=1e-5)


class _FSDPAccelerator:
    distributed_type = "DistributedType.FSDP"  # what Accelerator() is under an FSDP launch on GPUs


def test_an_fsdp_launch_is_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """HookedLM's parameter views and the main-process evaluation are not FSDP-ready (docs/unlearning.md, FSDP): the
    launch's environment (accelerate sets it even on CPU, where it would silently run DDP) or an FSDP accelerator is
    refused; a copy each process trains alone (recover's relearning) is not."""
    out = tmp_path / "unl"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    argv = ["unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "ga", "--steps", "1"]
    code, _, err = run_cli([*argv, "--quiet", "--out", out], capsys)
    assert code == 2 and err.count("\n") == 1 and "FSDP launches are not supported for training" in err
    assert "configs/accelerate/ddp.yaml" in err and not out.exists()
    check_training_launch(local_accelerator())  # the relearning copy of `unpact recover` still trains
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    items = load_items("builtin:synthetic_facts")
    with pytest.raises(InputError, match="FSDP"):
        unlearn(load_model("tiny"), items, "ga", steps=1, evaluate=False, accelerator=_FSDPAccelerator())
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(InputError, match="DeepSpeed"):
        check_training_launch()
