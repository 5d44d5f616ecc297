"""Measure unlearning recipes on SmolLM2-135M-Instruct with builtin:real_facts (forget = 31 capitals, retain = 52,
utility = 91 held-out facts no method trains on).

Default: every registered method with its default recipe (the registry's ``recipe`` and hyperparameters) -> the
table in docs/unlearning.md. ``--run`` gives explicit runs instead (for tuning), each
``METHOD[:lr=X][:steps=N][:batch=B][:key=value...]`` (key = a hyperparameter or ``trainable``).
``--eval-every K`` also records forget/retain/utility accuracy every K steps (the dynamics). Collateral damage is read
on the utility items (utility accuracy and its destructive rate with the exact 95% interval); retain accuracy is the
training anchor's, shown beside it.

    python experiments/tuning/unlearning_recipes.py --out /tmp/recipes            # the docs table
    python experiments/tuning/unlearning_recipes.py --run ga:lr=2e-5:steps=8 npo:beta=0.05 --eval-every 2 \
        --out /tmp/tune

Writes ``<out>/recipes.csv`` (one row per run), ``<out>/dynamics.csv`` and prints a markdown table. Timings are
wall-clock on this machine (2 CPU threads); other load on the machine makes them noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch


def parse_run(text: str) -> dict:
    from unpact_mech.unlearning import UNLEARNING_METHODS

    name, *parts = text.split(":")
    if name not in UNLEARNING_METHODS:
        raise SystemExit(f"unknown method {name!r}")
    spec: dict = {"method": name, "hp": {}, "train": {}, "trainable": None, "target": "generated", "label": text}
    for part in parts:
        key, _, value = part.partition("=")
        if key == "lr":
            spec["train"]["lr"] = float(value)
        elif key == "steps":
            spec["train"]["steps"] = int(value)
        elif key == "batch":
            spec["train"]["batch_size"] = int(value)
        elif key == "accum":
            spec["train"]["grad_accum"] = int(value)
        elif key == "schedule":
            spec["train"]["lr_schedule"] = value
        elif key == "target":
            spec["target"] = value
        elif key == "trainable":
            spec["trainable"] = value
        else:
            spec["hp"][key] = float(value)
    return spec


def main(argv: list[str] | None = None) -> int:
    """Run the recipes with ``--threads`` torch threads (the caller's thread count is restored afterwards: the
    script may run inside another process, e.g. its test)."""
    threads = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(threads)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", default=None, help="explicit runs (default: every method's recipe)")
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--model", default="smollm2", help="model spec (default: smollm2; tiny for a quick check)")
    parser.add_argument("--data", default=None, help="data spec (default: the model's built-in facts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from unpact_mech import load_items, load_model
    from unpact_mech.runtime import offline_and_quiet, seed_everything
    from unpact_mech.unlearning import UNLEARNING_METHODS, UnlearningFailed, unlearn

    offline_and_quiet()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from unpact_mech.pipeline.presets import default_data

    items = load_items(args.data or default_data(args.model))
    runs = [parse_run(r) for r in args.run] if args.run else [parse_run(name) for name in UNLEARNING_METHODS]
    rows, dyn = [], []
    for spec in runs:
        seed_everything(args.seed)
        model = load_model(args.model)
        t0 = time.perf_counter()
        try:
            res = unlearn(
                model,
                items,
                spec["method"],
                hyperparameters=spec["hp"],
                trainable=spec["trainable"],
                target=spec["target"],
                seed=args.seed,
                eval_every=args.eval_every,
                progress=False,
                **spec["train"],
            )
        except UnlearningFailed as err:
            print(f"{spec['label']}: FAILED {err}", file=sys.stderr)
            continue
        total = time.perf_counter() - t0
        s = res.summary
        row = {
            "run": spec["label"],
            "method": spec["method"],
            "lr": s["lr"],
            "steps": s["steps"],
            "batch": s["batch_size"],
            "hyperparameters": json.dumps(s["hyperparameters"]),
            "trainable": s["trainable"],
            "forget_before": s["forget_accuracy_before"],
            "forget_after": s["forget_accuracy_after"],
            "utility_before": s["utility_accuracy_before"],
            "utility_after": s["utility_accuracy_after"],
            "utility_destructive_rate": s["utility_destructive_rate"],
            "utility_destructive_ci_low": s["utility_destructive_rate_ci_low"],
            "utility_destructive_ci_high": s["utility_destructive_rate_ci_high"],
            "retain_before": s["retain_accuracy_before"],
            "retain_after": s["retain_accuracy_after"],
            "forget_lp_after": s["forget_logprob_after"],
            "retain_lp_after": s["retain_logprob_after"],
            "train_seconds": s["train_seconds"],
            "total_seconds": total,
        }
        rows.append(row)
        for d in res.train.dynamics:
            dyn.append({"run": spec["label"], **d})
        print(json.dumps(row), flush=True)
        pd.DataFrame(rows).to_csv(out / "recipes.csv", index=False)
        pd.DataFrame(dyn).to_csv(out / "dynamics.csv", index=False)
        del model, res
    table = pd.DataFrame(rows)
    if len(table):
        print(
            "\n| method | lr | steps | hyperparameters | forget acc before → after | utility acc before → after "
            "| utility destructive rate [95% CI] | retain (trained on) before → after | train s | total s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in table.itertuples():
            print(
                f"| {r.method} | {r.lr:g} | {r.steps} | {r.hyperparameters} | "
                f"{r.forget_before:.2f} → {r.forget_after:.2f} | {r.utility_before:.2f} → {r.utility_after:.2f} | "
                f"{r.utility_destructive_rate:.3f} [{r.utility_destructive_ci_low:.3f}, "
                f"{r.utility_destructive_ci_high:.3f}] | {r.retain_before:.2f} → {r.retain_after:.2f} | "
                f"{r.train_seconds:.0f} | {r.total_seconds:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
