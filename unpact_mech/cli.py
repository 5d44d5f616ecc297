"""The ``unpact`` console script.

Exit codes: 0 success; 2 bad input/usage (one line on stderr: ``unpact: error: ...``, nothing written);
1 unexpected failure (traceback). Every command runs offline and takes ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from unpact_mech.errors import InputError

#: Sub-command modules (``unpact_mech/commands/<name>.py``) in --help order; a command is listed only when its
#: module exists, so ``--help`` never shows a command that does not work.
COMMANDS = ("demo", "evaluate", "attribute", "unlearn", "recover", "report")


def available_commands() -> list[str]:
    import importlib.util

    return [name for name in COMMANDS if importlib.util.find_spec(f"unpact_mech.commands.{name}") is not None]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="unpact",
        description="unpact-mech: does LLM unlearning really erase knowledge? Evaluate, attribute, unlearn and "
        "recover on one hooked model (TransformerLens or nnsight), offline on CPU.",
    )
    parser.add_argument("--version", action="version", version="unpact-mech 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in available_commands():
        importlib.import_module(f"unpact_mech.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from unpact_mech.runtime import offline_and_quiet

    offline_and_quiet()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "run", None):
            parser.print_help()
            return 2
        return int(args.run(args) or 0)
    except InputError as err:
        print(f"unpact: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unpact: interrupted (no output written)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
