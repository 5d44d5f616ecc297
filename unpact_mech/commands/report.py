"""``unpact report RUN_DIR``: (re)build the self-contained report.html of a run directory."""

from __future__ import annotations

import argparse

HELP = (
    "rebuild RUN_DIR/report.html from the outputs of any unpact command (demo, evaluate, unlearn, attribute, recover)"
)


def add_parser(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP + ". The page is one file: no network, images inlined.")
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a directory written by unpact (searched recursively for run.json)"
    )
    p.add_argument("--title", default=None, help="page title (default: from the run)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from unpact_mech.report.html_report import build_report

    path = build_report(args.run_dir, title=args.title)
    print(f"-> {path}")
    return 0
