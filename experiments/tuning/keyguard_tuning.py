"""keyguard's tuning trail: train a configuration, then attack it on the TUNING forget items only.

The held-out half of the forget items (``experiments/keyword_aware_unlearning.py``'s fixed split,
``tuning_split`` seed 0) is never looked at here: hyperparameters for the comparison are chosen from this script's
output alone. One row per configuration: forget / utility / retain accuracy after unlearning (all items; utility =
the held-out facts no method trains on) and, on the tuning items the original answers and the unlearned model does
not, the recovery rate of every condition of ``--attacks`` (default ``emphasis``: the 11 keyword-emphasis
conditions; no controls) and the worst case over them.

    python experiments/tuning/keyguard_tuning.py --config steps=6 --config steps=10,prompt_attacks=2 --out tuning.csv
    python experiments/tuning/keyguard_tuning.py --method keyguard_grid --config grid_snap=0.01 \\
        --config grid_snap=0.02 --attacks emphasis quantize:scheme=source --out grid.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

TRAIN_KEYS = ("steps", "lr")


def parse_config(text: str) -> dict[str, float]:
    """``"steps=6,lr=1e-3,prompt_attacks=2"`` -> ``{"steps": 6.0, ...}`` (ValueError on a part without ``=``)."""
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--config: {part!r} is not key=value")
        out[key.strip()] = float(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="model spec (default: smollm2)")
    p.add_argument("--data", default="builtin:real_facts", help="QA items with the three splits (default: %(default)s)")
    p.add_argument("--method", default="keyguard", help="unlearning method (default: keyguard)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="K=V,...",
        help="one configuration (steps, lr, method hyperparameters); repeat for more (none: the defaults)",
    )
    p.add_argument(
        "--attacks",
        nargs="+",
        default=["emphasis"],
        metavar="SPEC",
        help="conditions as `unpact recover --attack` (default: emphasis, the keyword-emphasis suite)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of training and attacks (default: 0)")
    p.add_argument("--out", default=None, metavar="CSV", help="append the rows to this CSV")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from unpact_mech.errors import InputError

    try:
        configs = [parse_config(text) for text in args.config or [""]]
        return run(args, configs)
    except (InputError, ValueError) as err:
        print(f"keyguard_tuning: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, configs: list[dict[str, float]]) -> int:
    from unpact_mech.attacks import resolve_attacks
    from unpact_mech.attacks.battery import expand_specs
    from unpact_mech.data import FORGET, load_items, split_items
    from unpact_mech.data.splits import tuning_split
    from unpact_mech.models import load_model
    from unpact_mech.pipeline.presets import train_overrides
    from unpact_mech.recovery import RecoveryConfig, run_recovery
    from unpact_mech.recovery.worst_case import top_condition
    from unpact_mech.runtime import offline_and_quiet, seed_everything
    from unpact_mech.unlearning import get_unlearning_method, unlearn

    offline_and_quiet()
    preset = train_overrides(args.model, args.method)
    for cfg in configs:  # names checked before any work
        get_unlearning_method(
            args.method, **(preset.get("hyperparameters", {}) | {k: v for k, v in cfg.items() if k not in TRAIN_KEYS})
        )
    items = load_items(args.data)
    tuning, _ = tuning_split([it.id for it in split_items(items, FORGET)])  # keyword_aware_unlearning's split
    tuning_items = [it for it in items if it.id in set(tuning)]
    original = load_model(args.model)
    attacks = resolve_attacks(expand_specs(list(args.attacks), original), original)
    rows = []
    for text, cfg in zip(args.config or [""], configs):
        train = {k: v for k, v in preset.items() if k != "hyperparameters"}
        train |= {k: (int(v) if k == "steps" else v) for k, v in cfg.items() if k in TRAIN_KEYS}
        hp = preset.get("hyperparameters", {}) | {k: v for k, v in cfg.items() if k not in TRAIN_KEYS}
        seed_everything(args.seed)
        model = load_model(args.model)
        t0 = time.perf_counter()
        result = unlearn(model, items, args.method, hyperparameters=hp, seed=args.seed, progress=False, **train)
        seconds = time.perf_counter() - t0
        config = RecoveryConfig(attacks=attacks, controls=False, seed=args.seed)
        rec = run_recovery(original, model, tuning_items, config, progress=False)
        top = top_condition(rec.rates)
        summary = result.summary
        row = {
            "method": args.method,
            "config": text,
            "forget": summary["forget_accuracy_after"],
            "utility": summary.get("utility_accuracy_after"),
            "retain": summary.get("retain_accuracy_after"),
            "n_eligible_tuning": rec.summary["n_eligible"],
            "worst_recovery_tuning": top.get("rate"),
            "worst_condition": top["condition"],
            "train_seconds": round(seconds, 1),
            **{f"R:{r.condition}": round(r.recovery_rate, 3) for r in rec.rates.itertuples()},
        }
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
    if args.out:
        out = Path(args.out)
        pd.DataFrame(rows).to_csv(out, mode="a", header=not out.exists(), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
