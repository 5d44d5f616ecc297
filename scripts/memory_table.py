"""Print the memory each command needs for public Llama checkpoints (or your own config.json), from the formulas of
unpact_mech/models/memory.py: nothing is downloaded or built. The tables in docs/bigger_models.md are this script's
output (tests/unit/test_memory.py checks they are current).

    python scripts/memory_table.py --batch 8 --seq 128 --format markdown
    python scripts/memory_table.py --config path/to/config.json --dtypes bf16 --format csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unpact_mech.models.memory import BYTES_PER_ELEMENT, PUBLIC_CONFIGS, format_table, memory_table


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Memory (GiB) of weights, gradients, AdamW state, the loop's weight snapshot, the frozen "
        "reference, the KV cache and activations, and per command: evaluate = weights + KV cache; attribute = "
        "weights + activations; unlearn = weights + gradients + AdamW + snapshot + reference + activations "
        "(unlearn_ckpt: with --gradient-checkpointing). Formulas: docs/bigger_models.md.",
    )
    p.add_argument("--batch", type=positive_int, default=8, help="sequences per forward (default: 8)")
    p.add_argument("--seq", type=positive_int, default=512, help="tokens per sequence (default: 512)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="(default: markdown)")
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(PUBLIC_CONFIGS),
        default=None,
        metavar="NAME",
        help=f"public configs to include (default: all of {', '.join(PUBLIC_CONFIGS)}; none when --config is given)",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="an HF config.json of your own (repeatable; named after its directory)",
    )
    p.add_argument(
        "--dtypes", nargs="+", choices=sorted(BYTES_PER_ELEMENT), default=["fp32", "bf16"], help="(default: fp32 bf16)"
    )
    p.add_argument(
        "--logit-tokens",
        type=positive_int,
        default=None,
        metavar="K",
        help="tokens per sequence whose logits are kept (default: all; the unlearning loop keeps the answer span)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configs: dict[str, object] = {}
    names = args.models if args.models is not None else ([] if args.config else list(PUBLIC_CONFIGS))
    configs.update({name: PUBLIC_CONFIGS[name] for name in names})
    for path in map(Path, args.config):
        try:
            configs[path.resolve().parent.name or path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"memory_table.py: error: --config {path}: {err}", file=sys.stderr)
            return 2
    try:
        table = memory_table(configs, args.dtypes, args.batch, args.seq, logit_tokens=args.logit_tokens)
    except ValueError as err:
        print(f"memory_table.py: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(format_table(table, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
