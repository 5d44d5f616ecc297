"""Worker for test_sharded_commands.py, run by ``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU).

``sharded_worker.py RECORD_DIR ARGV [--next ARGV ...]`` runs ``unpact ARGV`` for each argument list in turn, in this
process (``unpact_mech.cli.main``, what ``-m unpact_mech.cli`` runs; one launch for several commands saves the start-up
of two processes per command), and writes ``RECORD_DIR/rank{r}.json``: each command's exit code and the number of
items of every ``evaluate_items`` call this process made (so the test can see that each process evaluated a share).
"""

import json
import os
import sys
from pathlib import Path

import torch

import unpact_mech.scoring.evaluate as scoring_evaluate
from unpact_mech.cli import main

torch.set_num_threads(1)
record, rest = Path(sys.argv[1]), sys.argv[2:]
commands: list[list[str]] = [[]]
for arg in rest:
    if arg == "--next":
        commands.append([])
    else:
        commands[-1].append(arg)

calls: list[list[int]] = []
evaluate_items = scoring_evaluate.evaluate_items


def counting(model, items, **kwargs):
    calls[-1].append(len(items))
    return evaluate_items(model, items, **kwargs)


scoring_evaluate.evaluate_items = counting  # the sharded path imports it when called
codes = []
for argv in commands:
    calls.append([])
    codes.append(main(argv))
rank = int(os.environ.get("RANK", "0"))
(record / f"rank{rank}.json").write_text(json.dumps({"codes": codes, "calls": calls}))
sys.exit(max(codes))
