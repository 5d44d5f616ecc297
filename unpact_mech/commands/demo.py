"""``unpact demo``: evaluate -> attribute -> unlearn (2+ methods) -> attribute again -> recover -> report.html."""

from __future__ import annotations

import argparse

HELP = "run the whole unPact study offline on the embedded model and write report.html (start here)"
EPILOG = """Stages: evaluate the built-in facts; occlusion (KeyTokens), residual-stream and attention-path attribution
on the original; per --methods: unlearn a fresh copy, attribute again (original vs unlearned), recover the forgotten
answers by keyword emphasis in the prompt and in the activations, with controls, then ask "is it really gone?"
with a fast subset of the battery (--battery; `unpact recover --attack all` runs the whole one). Outputs go to
unpact-runs/demo-MODEL-TIMESTAMP/ unless --out is given; an existing directory is never overwritten.
`unpact report RUN_DIR` rebuilds report.html.

examples:
  unpact demo                                   # SmolLM2-135M, ga_gdr + npo_gdr (~10 min on 2 CPU cores)
  unpact demo --model tiny                      # the 2-layer test model (< 1 min)
  unpact demo --methods ga npo_klr simnpo --out runs/demo3"""


def add_parser(sub) -> None:
    from unpact_mech.commands.common import add_backend_option, add_seed_option, positive_int
    from unpact_mech.demo import DemoConfig
    from unpact_mech.pipeline.presets import DEFAULT_METHODS, DEMO_INTERVENTIONS, DEMO_STRATEGIES
    from unpact_mech.unlearning import UNLEARNING_METHODS

    p = sub.add_parser(
        "demo", help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default="smollm2",
        metavar="SPEC",
        help="smollm2 (embedded SmolLM2-135M-Instruct, default), tiny, or a local HF model directory",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        metavar="METHOD",
        help=f"unlearning methods, each on a fresh copy (default: {' '.join(DEFAULT_METHODS)}; any of "
        f"{' '.join(UNLEARNING_METHODS)})",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="QA items with a forget/retain split (default: builtin:real_facts; builtin:synthetic_facts for tiny)",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="run directory to create (default: unpact-runs/demo-MODEL-TIMESTAMP)"
    )
    add_backend_option(p)
    add_seed_option(p)
    p.add_argument(
        "--steps", type=int, default=None, help="unlearning steps for every method (default: each method's recipe)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="unlearning learning rate for every method (default: each recipe's)"
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        default=list(DEMO_STRATEGIES),
        metavar="NAME",
        help=f"prompt strategies (default: {' '.join(DEMO_STRATEGIES)})",
    )
    p.add_argument(
        "--interventions",
        nargs="+",
        default=list(DEMO_INTERVENTIONS),
        metavar="SPEC",
        help=f"activation interventions, syntax as in `unpact recover` (default: {' '.join(DEMO_INTERVENTIONS)})",
    )
    p.add_argument(
        "--battery",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="'is it gone?' conditions after the keyword emphasis, syntax as in `unpact recover --attack` (default: "
        "quantize to the source grid and int4, relearn_unrelated:steps=5, relearn_split, logit_lens, "
        "ablate_direction, few_shot:shots=3, rephrase; 'none' to skip; 'all' for the full battery)",
    )
    p.add_argument(
        "--layer-items",
        type=int,
        default=8,
        metavar="N",
        help="forget items given residual-stream and attention-path attribution (default: 8)",
    )
    p.add_argument(
        "--max-control-items",
        type=positive_int,
        default=DemoConfig.max_control_items,
        metavar="N",
        help=f"items in the original-model and retain controls of recovery (default: {DemoConfig.max_control_items})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from unpact_mech.demo import DemoConfig, format_headline, run_demo

    cfg = DemoConfig(
        model=args.model,
        methods=tuple(args.methods),
        data=args.data,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        steps=args.steps,
        lr=args.lr,
        strategies=tuple(args.strategies),
        interventions=tuple(args.interventions),
        battery=None if args.battery is None else () if args.battery == ["none"] else tuple(args.battery),
        layer_items=args.layer_items,
        max_control_items=args.max_control_items,
    )
    result = run_demo(cfg, args.out, progress=not args.quiet)
    print(f"\nunpact demo finished in {result.seconds:.0f} s on {cfg.model} ({cfg.data_spec}):")
    print(format_headline(result.headline))
    print(f"\nopen {result.report}")
    return 0
