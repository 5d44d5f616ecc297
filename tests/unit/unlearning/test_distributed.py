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

import torch
from safetensors.torch import load_file

from unpact_mech import load_model

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

    _, (c0, c1) = _launch(tmp_path / "bypass", "--bypass")
    assert any(not torch.equal(c0[n], c1[n]) for n in c0), "without the DDP forward the ranks must diverge"
