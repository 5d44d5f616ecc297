"""Worker for test_fsdp.py, run by ``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU).

1. ``unpact unlearn --fsdp`` (the command, in-process) on the tiny model: ga_gdr, 3 steps at --batch-size 2, an
   evaluation after every step and a checkpoint after step 2 (both gather the sharded weights), the model directory
   written by the main process into ``OUT/ga_gdr``; then the same command resumed from that checkpoint (weights and
   AdamW state cut into shards again) into ``OUT/resumed``;
2. ``unlearn(..., fsdp=True)`` with ga_klr (a frozen reference copy), without evaluations: this rank's weights to
   ``OUT/ga_klr.rank{r}.safetensors``.

``OUT/rank{r}.json``: the commands' exit codes, the process count, and whether the model came back unsharded.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from unpact_mech import load_items, load_model
from unpact_mech.cli import main
from unpact_mech.distributed import process_rank_and_count
from unpact_mech.unlearning import unlearn
from unpact_mech.unlearning.fsdp import is_sharded

torch.set_num_threads(1)
out = Path(sys.argv[1])
argv = ["unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "ga_gdr", "--steps", "3",
        "--lr", "1e-3", "--batch-size", "2", "--fsdp", "--eval-every", "1", "--checkpoint-every", "2", "--quiet",
        "--checkpoint-dir", str(out / "checkpoints")]  # fmt: skip
code = main([*argv, "--keep-checkpoints", "--out", str(out / "ga_gdr")])
resumed = main([*argv, "--resume", "--out", str(out / "resumed")])  # from the checkpoint of step 2
rank, world = process_rank_and_count()
model = load_model("tiny")
unlearn(
    model, load_items("builtin:synthetic_facts"), "ga_klr", steps=3, lr=1e-3, batch_size=2, fsdp=True,
    evaluate=False, progress=False,
)  # fmt: skip
params = dict(model.named_parameters())
whole = not any(is_sharded(p) for p in params.values()) and not any(is_sharded(p) for p in model.hf.parameters())
save_file({n: p.detach().contiguous() for n, p in params.items()}, str(out / f"ga_klr.rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(
    json.dumps({"code": code, "resumed": resumed, "num_processes": world, "unsharded_after": whole})
)
