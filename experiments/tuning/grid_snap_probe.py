"""Choosing keyguard_grid's snapping fraction: one unlearned model, snapped at several fractions ρ.

For each ``--fractions`` value ρ, the trained matrices of ``--unlearned`` (an ``unpact unlearn`` output directory;
keyguard_grid trains exactly keyguard's weights and snaps them afterwards) are snapped onto the quantization grid
(``unpact_mech/unlearning/grid_snap.py``; ρ = 0: the trained weights as they are). One row per ρ: the snapped model's
forget and utility accuracy, and the forget accuracy of the snapped model re-quantized with ``--scheme`` (default
``source``: the embedded SmolLM2's own GGUF types), each forget accuracy on all forget items and on the TUNING and
held-out halves apart (``tuning_split`` seed 0, as ``experiments/keyword_aware_unlearning.py``); choose ρ on the
tuning half. ``off_base_share``: the share of the trained matrices' elements more than half a grid step from the base
(the snapped ones, and any that training itself moved that far).

    unpact unlearn --model smollm2 --method keyguard --out runs/keyguard
    python experiments/tuning/grid_snap_probe.py --unlearned runs/keyguard --fractions 0 0.01 0.02 0.03 0.05 0.2 \\
        --out runs/grid_snap_probe.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unlearned", required=True, metavar="DIR", help="an `unpact unlearn` output directory")
    p.add_argument("--model", default="smollm2", help="the base model it was unlearned from (default: smollm2)")
    p.add_argument("--data", default="builtin:real_facts", help="QA items with the three splits (default: %(default)s)")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.0, 0.01, 0.02, 0.03, 0.05], metavar="RHO")
    p.add_argument("--scheme", default="source", help="grid to snap to and re-quantize with (default: source)")
    p.add_argument("--seed", type=int, default=0, help="seed (the evaluation is greedy; default: 0)")
    p.add_argument("--out", default=None, metavar="CSV", help="write the table here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from unpact_mech.errors import InputError

    try:
        if not all(0.0 <= f <= 1.0 for f in args.fractions):
            raise InputError(f"--fractions must be in [0, 1], got {args.fractions}")
        if not (Path(args.unlearned) / "model.safetensors").is_file():
            raise InputError(f"--unlearned {args.unlearned}: no model.safetensors (not an `unpact unlearn` output)")
        table = run(args)
    except InputError as err:
        print(f"grid_snap_probe: error: {err}", file=sys.stderr)
        return 2
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


def run(args: argparse.Namespace) -> pd.DataFrame:
    import torch
    from safetensors.torch import load_file

    from unpact_mech.attacks.quantize import bin_width, quantized_copy, scheme_plan
    from unpact_mech.data import FORGET, UTILITY, load_items, split_items
    from unpact_mech.data.splits import tuning_split
    from unpact_mech.errors import InputError
    from unpact_mech.models import load_model
    from unpact_mech.runtime import offline_and_quiet, seed_everything
    from unpact_mech.scoring.evaluate import evaluate_items
    from unpact_mech.unlearning.grid_snap import snap_matrices

    offline_and_quiet()
    seed_everything(args.seed)
    model = load_model(args.model)
    plan = scheme_plan(model, args.scheme)  # an unknown scheme or a model without a source grid: InputError now
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trained = load_file(str(Path(args.unlearned) / "model.safetensors"))
    moved = [k for k in trained if k in plan and k in base and not trained[k].equal(base[k])]
    if not moved:
        raise InputError(f"--unlearned {args.unlearned}: no matrix of the grid differs from {args.model}'s")
    items = load_items(args.data)
    forget, utility = split_items(items, FORGET), split_items(items, UTILITY)
    tuning, held_out = tuning_split([it.id for it in forget])
    steps = {k: bin_width(base[k], plan[k], 32).to(trained[k].dtype) for k in moved}
    rows = []
    for rho in args.fractions:
        snapped = snap_matrices(base, {k: trained[k] for k in moved}, plan, rho)
        with torch.no_grad():
            for k, p in model.state_dict().items():
                if k in snapped:
                    p.copy_(snapped[k])
        share = sum(int(((snapped[k] - base[k]).abs() > 0.5 * steps[k]).sum()) for k in moved)
        row = {"fraction": rho, "off_base_share": share / sum(base[k].numel() for k in moved)}
        f = evaluate_items(model, forget, progress=False).set_index("item_id")["correct"]
        u = evaluate_items(model, utility, progress=False)["correct"]
        q = evaluate_items(quantized_copy(model, args.scheme), forget, progress=False).set_index("item_id")["correct"]
        row |= {"forget": f.mean(), "forget_tuning": f[tuning].mean(), "forget_held_out": f[held_out].mean()}
        row |= {"utility": u.mean(), "requantized_forget": q.mean(), "requantized_forget_tuning": q[tuning].mean(),
                "requantized_forget_held_out": q[held_out].mean()}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


if __name__ == "__main__":
    sys.exit(main())
