"""keyguard's tuning trail: train a configuration, then the recovery suite on the TUNING forget items only.

The held-out half of the forget items (``experiments/keyword_aware_unlearning.py``'s fixed split) is never looked at
here; hyperparameters for the comparison were chosen from this script's output alone. One line per configuration:
forget / retain accuracy after unlearning (all items) and the worst-case recovery rate over the suite's conditions
(keyword emphasis, no controls) on the tuning items the original answers and the unlearned model does not.

    python experiments/tuning/keyguard_tuning.py --config steps=6 --config steps=10,prompt_attacks=2 --out tuning.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

TRAIN_KEYS = ("steps", "lr")


def parse_config(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = float(value)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--method", default="keyguard")
    p.add_argument("--config", action="append", default=[], help="key=value,... (steps, lr, method hyperparameters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append the rows to this CSV")
    args = p.parse_args()

    from unpact_mech.data import FORGET, load_items, split_items
    from unpact_mech.data.splits import tuning_split
    from unpact_mech.models import load_model
    from unpact_mech.recovery import RecoveryConfig, run_recovery
    from unpact_mech.runtime import offline_and_quiet, seed_everything
    from unpact_mech.unlearning import unlearn

    offline_and_quiet()
    items = load_items("builtin:real_facts")
    tuning, _ = tuning_split([it.id for it in split_items(items, FORGET)])  # keyword_aware_unlearning's split
    tuning_items = [it for it in items if it.id in set(tuning)]
    original = load_model(args.model)
    rows = []
    for text in args.config or [""]:
        cfg = parse_config(text)
        train = {k: (int(v) if k == "steps" else v) for k, v in cfg.items() if k in TRAIN_KEYS}
        hp = {k: v for k, v in cfg.items() if k not in TRAIN_KEYS}
        seed_everything(args.seed)
        model = load_model(args.model)
        t0 = time.perf_counter()
        result = unlearn(model, items, args.method, hyperparameters=hp, seed=args.seed, progress=False, **train)
        seconds = time.perf_counter() - t0
        rec = run_recovery(
            original, model, tuning_items, RecoveryConfig(controls=False, n_boot=200, seed=args.seed), progress=False
        )
        rates = rec.summary["recovery_rate"]
        worst = max(rates, key=lambda c: rates[c])
        row = {
            "method": args.method,
            "config": text,
            "forget": result.summary["forget_accuracy_after"],
            "retain": result.summary["retain_accuracy_after"],
            "n_eligible_tuning": rec.summary["n_eligible"],
            "worst_recovery_tuning": rates[worst],
            "worst_condition": worst,
            "train_seconds": round(seconds, 1),
            **{f"R:{k}": round(v, 3) for k, v in rates.items()},
        }
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        out = Path(args.out)
        table.to_csv(out, mode="a", header=not out.exists(), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
