"""``unpact attribute``: which prompt tokens / layers / heads / residual components carry the answer?"""

from __future__ import annotations

import argparse
from typing import Any

from unpact_mech.commands.common import add_model_options, add_run_options, model_kwargs, positive_int
from unpact_mech.errors import InputError

HELP = "attribute answers to prompt tokens/words, attention heads or residual components"
#: Method option -> the ``args`` attribute of its flag (a flag applies to the methods that have its option).
OPTION_FLAGS = {
    "mode": "mode",
    "baseline_token": "baseline_token",
    "batching": "batching",
    "steps": "steps",
    "positions": "ig_positions",
    "hooks": "hooks",
    "layers": "layers",
    "batch_size": "batch_size",
}
NOTES = """--batch-size: occlusion variants (batch rows, or branches of a packed row) per forward.
outputs: results.csv (long), summary.json (keyword_hit_rate, ...), run.json, tokens.html (token/word heatmap,
side by side with --compare-to), attention_heads.png / residual_components.png + logit_lens.png, and with
--compare-to: comparison.csv (before/after diffs) and keytoken_change.csv."""


def _flag(option: str) -> str:
    return "--" + OPTION_FLAGS[option].replace("_", "-")


def _epilog() -> str:
    """The registered methods, each with its description and the flags that set its options."""
    from unpact_mech.attribution.methods import ATTRIBUTION_METHODS

    lines = ["methods:"]
    for name, cls in ATTRIBUTION_METHODS.items():
        lines.append(f"  {name:<21} {cls.description}")
        flags = [_flag(o) for o in cls.default_options() if o in OPTION_FLAGS]
        if flags:
            lines.append(f"  {'':<21} flags: {', '.join(flags)}")
    return "\n".join(lines + [NOTES])


def _layers(text: str) -> tuple[int, ...]:
    from unpact_mech.syntax import parse_int_list

    try:
        return parse_int_list(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot parse layers {text!r} (use e.g. 0-9 or 0+5+10)") from None


def _steps(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}")
    return value


def add_parser(sub) -> None:
    from unpact_mech.attribution.integrated_gradients import DEFAULT_STEPS, POSITION_SETS
    from unpact_mech.attribution.keytokens import DEFAULT_KEYTOKEN_ALPHA, DEFAULT_KEYTOKEN_BETA
    from unpact_mech.attribution.methods import ATTRIBUTION_METHODS
    from unpact_mech.attribution.occlusion import BATCHINGS
    from unpact_mech.attribution.packing import OCCLUSION_MODES
    from unpact_mech.attribution.targets import TARGETS

    p = sub.add_parser(
        "attribute",
        help=HELP,
        description=HELP + ".",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_run_options(p)
    p.add_argument("--method", required=True, choices=list(ATTRIBUTION_METHODS), help="attribution method (see below)")
    p.add_argument(
        "--level",
        default="token",
        choices=["token", "word"],
        help="attribute question tokens or words (a word = its sub-word tokens together; default: token)",
    )
    p.add_argument(
        "--target",
        default="auto",
        choices=["auto", *TARGETS],
        help="answer = teacher-forced mean log-prob of the bare answer right after the prompt (the paper's LP); "
        "answer_in_context = the same for the answer's tokens inside the original model's own answer sentence "
        "(recorded once, teacher-forced for --compare-to too); first_logit = the bare answer's first-token logit; "
        "auto (default) = answer_in_context for chat-format prompts, else answer",
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=list(OCCLUSION_MODES),
        help="occlusion: delete the unit (paper) or replace it by --baseline-token (default: delete)",
    )
    p.add_argument(
        "--baseline-token",
        default=None,
        metavar="TEXT",
        help="one-token text for --mode replace (default: the pad token) and the IG baseline (default: zeros)",
    )
    p.add_argument(
        "--batching",
        default=None,
        choices=list(BATCHINGS),
        help="occlusion: right-padded batch, packed tree-masked row, or choose by model size (default: auto)",
    )
    p.add_argument(
        "--keytoken-alpha",
        type=float,
        default=DEFAULT_KEYTOKEN_ALPHA,
        help=f"KeyTokens: keep units >= alpha x the largest (0 < alpha <= 1; default {DEFAULT_KEYTOKEN_ALPHA})",
    )
    p.add_argument(
        "--keytoken-beta",
        type=int,
        default=DEFAULT_KEYTOKEN_BETA,
        help=f"KeyTokens: all positive units if fewer than beta (>= 1; default {DEFAULT_KEYTOKEN_BETA})",
    )
    p.add_argument(
        "--steps", type=_steps, default=None, help=f"integrated gradients: quadrature nodes (default {DEFAULT_STEPS})"
    )
    p.add_argument(
        "--ig-positions",
        default=None,
        choices=list(POSITION_SETS),
        help="integrated gradients: interpolate the question tokens (default) or all prompt tokens but the first",
    )
    p.add_argument(
        "--hooks",
        nargs="+",
        default=None,
        metavar="HOOK",
        help="grad_x_input: also gradient x activation at these hooks, e.g. blocks.3.hook_resid_post",
    )
    p.add_argument(
        "--layers",
        type=_layers,
        default=None,
        metavar="LAYERS",
        help="attention: layers, e.g. 0-9 or 0+5+10 (default: all)",
    )
    p.add_argument(
        "--compare-to",
        default=None,
        metavar="SPEC",
        help="also attribute this model (e.g. the unlearned one) and write the before/after comparison",
    )
    p.set_defaults(run=run)


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method's options from the flags given (``--batch-size`` whenever the method has a batch size); a flag
    the method does not take is an :class:`InputError` naming the flags it does take."""
    from unpact_mech.attribution.methods import ATTRIBUTION_METHODS

    accepted = ATTRIBUTION_METHODS[args.method].default_options()
    given = {o: getattr(args, dest) for o, dest in OPTION_FLAGS.items() if getattr(args, dest) is not None}
    wrong = [_flag(o) for o in given if o not in accepted and o != "batch_size"]
    if wrong:
        usable = ", ".join(_flag(o) for o in accepted if o in OPTION_FLAGS) or "none"
        verb = "does" if len(wrong) == 1 else "do"
        raise InputError(f"{', '.join(wrong)} {verb} not apply to --method {args.method} (its flags: {usable})")
    options = {o: v for o, v in given.items() if o in accepted}
    if "hooks" in options:
        options["hooks"] = tuple(options["hooks"])
    return options


def _label(name: str, taken: str | None = None) -> str:
    return name if name != taken else f"{name} (compared)"


def run(args: argparse.Namespace) -> int:
    from unpact_mech.attribution.outputs import attribution_summary, write_attribution
    from unpact_mech.attribution.run import AttributionConfig, attribute_items, compare_runs, prepare_items
    from unpact_mech.data import load_items
    from unpact_mech.distributed import is_main_process
    from unpact_mech.io import atomic_output_dir, check_outside, prepare_output_path, run_record
    from unpact_mech.models import load_model
    from unpact_mech.recovery.run import check_compatible
    from unpact_mech.runtime import seed_everything
    from unpact_mech.scoring.prompt import prompt_format_from_name

    seed_everything(args.seed)
    main = is_main_process()  # under `accelerate launch`: joins the process group first (a GPU per process)
    cfg = AttributionConfig(
        method=args.method,
        level=args.level,
        target=args.target,
        keytoken_alpha=args.keytoken_alpha,
        keytoken_beta=args.keytoken_beta,
        options=method_options(args),
    )
    cfg.validate()  # cheap checks first: nothing is loaded or written for bad values
    prepare_output_path(args.out, overwrite=args.overwrite)
    items = load_items(args.data, schema=args.schema)
    models = [load_model(args.model, **model_kwargs(args))]
    if args.compare_to:
        models.append(load_model(args.compare_to, **model_kwargs(args)))
        check_compatible(models[0], models[1])
    for model in models:
        check_outside(args.out, model.source_dir, "--out")
        model.prompt_format = prompt_format_from_name(args.prompt_format, model.tokenizer)
        cfg.validate_for(model)
    for m in models:
        prepare_items(m, items)  # empty answers / too long: before any work

    labels = [models[0].name] + ([_label(models[1].name, models[0].name)] if len(models) > 1 else [])
    # shard: under `accelerate launch` each process attributes its share of the items, all get every result
    runs = [attribute_items(models[0], items, cfg, label=labels[0], progress=not args.quiet, shard=True)]
    if len(models) > 1:  # the same own-answer contexts (the first model's) for the compared model
        runs.append(
            attribute_items(
                models[1],
                items,
                cfg,
                label=labels[1],
                progress=not args.quiet,
                own_answers=runs[0].own_answers,
                shard=True,
            )
        )
    if not main:  # every process has every result; the main one writes and prints
        return 0
    comparison = compare_runs(runs[0], runs[1]) if len(runs) > 1 else None

    summary = attribution_summary(runs, comparison, labels, args.backend)
    config = vars(args) | {"options": cfg.method_object().options(), "resolved_target": runs[0].target}
    weights = {"model": models[0]} | ({"compare_to": models[1]} if len(models) > 1 else {})  # hashed in run.json
    run_meta = run_record(
        "attribute", config=config, seed=args.seed, data=args.data, lineage=models[-1].lineage, models=weights
    )
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_attribution(
            tmp,
            runs,
            comparison,
            items,
            run_meta,
            summary,
            title=f"{args.method} attribution ({args.level} level, target {runs[0].target})",
            subtitle=" vs ".join(labels),
        )

    hit = summary.get("keyword_hit_rate")
    hit_txt = f"keyword hit rate {hit:.2f}" if hit is not None else "no keyword hit rate (no token view or no keywords)"
    by_split = {k: v for k, v in (summary.get("keyword_hit_rate_by_split") or {}).items() if v is not None}
    if hit is not None and by_split:  # forget, retain and utility apart
        hit_txt += f" ({', '.join(f'{split} {value:.2f}' for split, value in by_split.items())})"
    print(f"{args.method} ({args.level}, target {runs[0].target}) on {len(items)} items: {hit_txt} -> {args.out}")
    if comparison is not None and comparison.summary.get("keytoken_change"):
        by_split = comparison.summary["keytoken_change"].get("by_split") or {}
        for split, kt in by_split.items():  # forget and retain/utility apart: they answer different questions
            if "keytokens" in kt and "other" in kt:
                print(
                    f"  {split}: KeyTokens {kt['keytokens']['before']:.3f} -> {kt['keytokens']['after']:.3f}; "
                    f"other units {kt['other']['before']:.3f} -> {kt['other']['after']:.3f}"
                )
    return 0
