"""Worker for test_distributed.py, run by ``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU).

Unlearns the tiny model with ga_gdr (or ``--method NAME``: keyguard2 runs the steer rows and the loop's extra weight
passes under DDP) for a few steps — each rank draws its own slice of every global batch — and saves this rank's
trainable weights to ``OUT/rank{r}.safetensors`` plus ``OUT/rank{r}.json``. ``--bypass`` is the negative control: the
loss forward calls ``model.hf`` directly instead of the DDP wrapper (what happens without
``HookedLM.forward_through``), so DDP never synchronises the gradients.
"""

import contextlib
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from unpact_mech import load_items, load_model
from unpact_mech.unlearning import unlearn

torch.set_num_threads(1)
out, bypass = Path(sys.argv[1]), "--bypass" in sys.argv
method = sys.argv[sys.argv.index("--method") + 1] if "--method" in sys.argv else "ga_gdr"
#: the tiny runs of tests/unit/unlearning/conftest.py (keyguard and its variants write at layers 0 and 1)
options = (
    dict(lr=1e-2, hyperparameters={"layer": 0, "late_layer": 1, "c": 20.0, "alpha": 1.0})
    if method.startswith("keyguard")
    else dict(lr=1e-3)
)
acc = Accelerator(cpu=True)
model = load_model("tiny")
if bypass:
    model.forward_through = lambda wrapper: contextlib.nullcontext(model)  # type: ignore[method-assign]
items = load_items("builtin:synthetic_facts")
result = unlearn(
    model, items, method, steps=3, batch_size=2, evaluate=False, progress=False, accelerator=acc, **options
)
rank = acc.process_index
save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "num_processes": acc.num_processes,
            "distributed_type": str(acc.distributed_type),
            "losses": [r["loss"] for r in result.train.loss_log],
        }
    )
)
