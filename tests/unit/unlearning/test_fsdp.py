"""Unlearning under FSDP (``unpact unlearn --fsdp``, torch FSDP2) on 2 CPU processes ends with the weights of one.

Launched as the DDP test is (``accelerate launch --multi_gpu --num_processes 2``: torchrun, gloo without a GPU); the
worker (fsdp_worker.py) runs the command with evaluations after every step, a checkpoint, a resumed run, and ga_klr
(a frozen reference) through ``unlearn(..., fsdp=True)``. Rank r of step s draws the rows of slot 2s + r, as
micro-batch r of step s does with ``--grad-accum 2``, and FSDP averages the gradients over the processes, so one
process at ``--batch-size 2 --grad-accum 2`` is the reference.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.cli_helpers import run_cli
from tests.unit.unlearning.test_distributed import _free_port
from unpact_mech import load_items, load_model
from unpact_mech.errors import InputError
from unpact_mech.unlearning import unlearn
from unpact_mech.unlearning.fsdp import ONE_PROCESS

WORKER = __file__.replace("test_fsdp.py", "fsdp_worker.py")
RECIPE = dict(steps=3, lr=1e-3, batch_size=2, progress=False)


def _launch(out):
    import subprocess
    import sys

    out.mkdir()
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), WORKER,
        str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.filterwarnings("ignore::unpact_mech.unlearning.ForgettingWarning")
def test_fsdp_on_two_processes_ends_with_the_weights_of_one_process(tmp_path):
    out = tmp_path / "fsdp"
    info = _launch(out)
    assert [i["code"] for i in info] == [0, 0] and [i["resumed"] for i in info] == [0, 0]
    assert [i["num_processes"] for i in info] == [2, 2]
    assert all(i["unsharded_after"] for i in info)  # HookedLM is an ordinary model again after the session

    torch.set_num_threads(1)
    items = load_items("builtin:synthetic_facts")
    one = load_model("tiny")
    ref = unlearn(one, items, "ga_gdr", grad_accum=2, eval_every=1, **RECIPE)
    base = dict(load_model("tiny").named_parameters())
    mine = {n: p.detach() for n, p in one.named_parameters()}

    # the model directory the main process wrote: the weights of one process, and it loads as they are
    written = load_file(str(out / "ga_gdr" / "model.safetensors"))
    assert _max_diff(written, mine) < 1e-5
    assert any(not torch.equal(written[n], base[n].detach()) for n in written)  # it trained
    loaded = {n: p.detach() for n, p in load_model(str(out / "ga_gdr")).named_parameters()}
    assert all(torch.equal(loaded[n], written[n]) for n in written)
    losses = pd.read_csv(out / "ga_gdr" / "training_log.csv")["loss"].tolist()
    assert losses == pytest.approx([r["loss"] for r in ref.train.loss_log], rel=1e-5)

    # evaluations after every step ran on the gathered current weights: those of one process
    dyn, ref_dyn = pd.read_csv(out / "ga_gdr" / "dynamics.csv"), ref.dynamics_table()
    assert dyn["step"].tolist() == [0, 1, 2, 3]
    for col in ("forget_accuracy", "retain_accuracy", "utility_accuracy"):
        assert dyn[col].tolist() == ref_dyn[col].tolist()
    assert dyn["forget_logprob"].to_numpy() == pytest.approx(ref_dyn["forget_logprob"].to_numpy(), abs=1e-4)

    # resumed from the checkpoint of step 2 (weights and AdamW state gathered, then cut into shards again)
    summary = json.loads((out / "resumed" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2
    assert _max_diff(load_file(str(out / "resumed" / "model.safetensors")), written) == 0.0

    # ga_klr through unlearn(..., fsdp=True): its frozen reference is a full copy; both ranks hold the same weights
    w0, w1 = (load_file(str(out / f"ga_klr.rank{r}.safetensors")) for r in (0, 1))
    assert _max_diff(w0, w1) == 0.0
    klr = load_model("tiny")
    unlearn(klr, items, "ga_klr", grad_accum=2, evaluate=False, **RECIPE)
    assert _max_diff(w0, {n: p.detach() for n, p in klr.named_parameters()}) < 1e-5


def test_fsdp_needs_a_launch_of_two_processes(tmp_path, capsys, monkeypatch):
    """One line, exit 2, nothing written; under accelerate's FSDP launch too (--fsdp is the switch, not the plugin)."""
    out = tmp_path / "unl"
    argv = ["unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "ga", "--steps", "1"]
    for plugin in (False, True):
        if plugin:
            monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        code, _, err = run_cli([*argv, "--fsdp", "--quiet", "--out", out], capsys)
        assert code == 2 and err.count("\n") == 1 and ONE_PROCESS in err and not out.exists()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(InputError, match="needs at least 2"):
        unlearn(load_model("tiny"), load_items("builtin:synthetic_facts"), "ga", steps=1, fsdp=True, evaluate=False)
