"""One GPU check (``make gpu-check``): the slow test tier and the demo on CUDA in bfloat16, with timings, and how
far bfloat16 agrees with float32 on the built-in facts.

Parts (``--parts``, default all three, in this order):

* ``agreement`` — the model loaded twice on ``--device`` (float32 and bfloat16), every built-in fact evaluated by
  both: the share of identical greedy answers, both accuracies, the largest logit difference over the prompts
  relative to the logit scale, and the mean |LP| difference;
* ``slow`` — ``pytest tests/slow`` (the real-SmolLM2 tier; its models load with ``--device auto``, i.e. on the GPU);
* ``demo`` — ``unpact demo --device DEVICE --dtype bfloat16`` into a temporary directory.

Prints one line per part and writes them to ``bench-results/gpu_check.json``. Without CUDA (and without an explicit
``--device cpu``, which exists to test this script) it stops with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("agreement", "slow", "demo")


def agreement(model_spec: str, device: str, data: str) -> dict:
    """bfloat16 vs float32 on ``device``: answers, accuracy, logits."""
    import torch

    from unpact_mech import load_items, load_model
    from unpact_mech.scoring import evaluate_items
    from unpact_mech.scoring.batching import left_pad
    from unpact_mech.scoring.tokens import encode_items

    items = load_items(data)
    f32 = load_model(model_spec, device=device, dtype="float32")
    b16 = load_model(model_spec, device=device, dtype="bfloat16")
    a = evaluate_items(f32, items, progress=False)
    b = evaluate_items(b16, items, progress=False)
    enc = encode_items(f32, items[:32])
    batch = left_pad([e.prompt.ids for e in enc], f32.pad_token_id, list(range(len(enc))))
    with torch.no_grad():
        z32 = f32.forward(batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        z16 = b16.forward(batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    real = batch.attention_mask.bool().to(z32.device)
    gap = float((z32 - z16).abs()[real].max() / z32[real].abs().max())
    return {
        "items": len(items),
        "same_answers": float((a["generation"] == b["generation"]).mean()),
        "accuracy_float32": float(a["correct"].mean()),
        "accuracy_bfloat16": float(b["correct"].mean()),
        "max_logit_diff_rel": gap,
        "mean_abs_lp_diff": float((a["logprob"] - b["logprob"]).abs().mean()),
    }


def timed(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return {
        "command": " ".join(cmd),
        "seconds": round(time.perf_counter() - t0, 1),
        "rc": proc.returncode,
        "tail": tail,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N (default: cuda); cpu only to test this script")
    p.add_argument("--model", default="smollm2", help="model spec for the agreement part (default: smollm2)")
    p.add_argument("--data", default="builtin:real_facts", help="items of the agreement part")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: all)")
    p.add_argument("--out", default=str(REPO / "bench-results" / "gpu_check.json"), help="where the JSON goes")
    args = p.parse_args(argv)

    from unpact_mech.models.device import device_problem

    why = device_problem(args.device)
    if why or (args.device != "cpu" and not args.device.startswith("cuda")):
        print(f"gpu-check: --device {args.device}: {why or 'expected cuda or cuda:N'}", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    if "agreement" in args.parts:
        t0 = time.perf_counter()
        results["agreement"] = agreement(args.model, args.device, args.data)
        results["agreement"]["seconds"] = round(time.perf_counter() - t0, 1)
    if "slow" in args.parts:
        results["slow"] = timed([sys.executable, "-m", "pytest", "-q", "tests/slow", "-p", "no:cacheprovider"])
    if "demo" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            demo = [sys.executable, "-m", "unpact_mech.cli", "demo", "--device", args.device, "--dtype", "bfloat16"]
            results["demo"] = timed([*demo, "--out", str(Path(tmp) / "demo"), "--quiet"])
    for part, res in results.items():
        shown = {k: v for k, v in res.items() if k not in ("tail", "command")}
        print(f"{part:<10} {json.dumps(shown)}")
        for line in res.get("tail", []):
            print(f"{'':<10} | {line}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": args.device, **results}, indent=2) + "\n")
    failed = [k for k, v in results.items() if v.get("rc", 0) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
