"""Compare two recovery runs on the same items — e.g. ``keyguard`` against RMU under the same suite.

Reads ``per_item.csv`` of two recovery directories (``unpact recover --out DIR``, a demo's ``recovery/<method>/``, or
``keyword_aware_unlearning``'s ``recovery/<variant>/``) and, on the forget items eligible in BOTH (original right,
unlearned wrong), gives per condition the items each run's unlearned model answers again under the emphasis, and
the exact McNemar p-value of the paired outcomes; the last row, ``any condition``, counts an item recovered by at
least one condition. p-values are per condition, not corrected for the number of conditions.

    python experiments/compare_recovery.py runs/kau/recovery/rmu runs/kau/recovery/keyguard --out paired.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", metavar="A", help="recovery directory with per_item.csv (columns recovered_a, rate_a)")
    parser.add_argument("run_b", metavar="B", help="the other recovery directory (columns recovered_b, rate_b)")
    parser.add_argument("--out", metavar="CSV", help="also write the table here (a new file)")
    args = parser.parse_args(argv)
    paths = [Path(args.run_a) / "per_item.csv", Path(args.run_b) / "per_item.csv"]
    for path in paths:
        if not path.is_file():
            print(f"compare_recovery: {path}: no such file (give a recovery output directory)", file=sys.stderr)
            return 2
    if args.out and Path(args.out).exists():
        print(f"compare_recovery: --out {args.out}: already exists", file=sys.stderr)
        return 2
    import pandas as pd

    from unpact_mech.recovery.compare import paired_recovery

    table = paired_recovery(*(pd.read_csv(p) for p in paths))
    print(f"A = {args.run_a}, B = {args.run_b}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
