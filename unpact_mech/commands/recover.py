"""``unpact recover``: bring forgotten answers back by emphasising keywords, without changing weights."""

from __future__ import annotations

import argparse
import sys

from unpact_mech.commands.common import add_max_new_tokens_option, model_kwargs
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE

HELP = (
    "try to recover forgotten answers: keyword emphasis (prompt strategies, activation interventions) and the "
    "'is it gone?' battery (quantization, relearning, logit lens, direction ablation, few-shot, rephrasing)"
)
EPILOG = """conditions come from the attack registry (unpact_mech.attacks); --strategy takes prompt strategies,
--intervention activation interventions as NAME[:key=value,...] with integer lists as a-b ranges and + lists:
  scale:factor=3,layers=0-9   patch:layers=0-29   steer:coefficient=2   pasta:other_weight=0.05,layers=10-19,heads=0+4
Defaults: scale x2 on the first half of the layers; patch from the original at all layers; steer (mean
original-minus-unlearned residual at keyword positions, coefficient 1) on the first half; pasta (attention to
other keys x0.1) on the middle third, all heads. Use 'none' to run no strategies / no interventions.
--attack runs any registered conditions (any kind), e.g.
  --attack quantize:scheme=int4 relearn_unrelated:steps=5 relearn_split logit_lens ablate_direction few_shot:shots=5
or --attack all for the full battery (docs/recovery.md); with --attack, --strategy and --intervention run only
when given. Each condition reports the recovery rate on the eligible items, the same attack on the original model,
the collateral on utility items and the share of the forget-set gap it closes (gap_fraction); the summary names the
worst case per family. Detail tables (logit lens per layer, depth curve, quantization grid per tensor, relearning
losses) go to details/.
--ablation sweeps the given interventions (default: patch and scale) over layers x position groups.
--keywords-from RUN_DIR reads the KeyTokens of an earlier word-level occlusion run of the original model
(unpact attribute --model ORIGINAL --method occlusion --level word --target answer --out RUN_DIR) instead of
computing them again. Once the two baselines have run, a plan line (conditions x items x controls) and a time
estimate go to stderr (not with --quiet)."""


def add_parser(sub) -> None:
    from unpact_mech.attacks import attack_names
    from unpact_mech.attribution.keytokens import DEFAULT_KEYTOKEN_ALPHA, DEFAULT_KEYTOKEN_BETA
    from unpact_mech.commands.common import add_run_options

    strategies, interventions = default_names("strategy"), default_names("intervention")
    p = sub.add_parser(
        "recover",
        help=HELP,
        description=HELP + ". Writes rates.csv (one row per strategy/"
        "intervention with CIs and controls), results.csv, per_item.csv, keywords.csv, plots, "
        "summary.json and run.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--original", default="smollm2", metavar="SPEC", help="the model before unlearning (default: smollm2)"
    )
    p.add_argument(
        "--unlearned", required=True, metavar="SPEC", help="the unlearned model (e.g. an `unpact unlearn` output)"
    )
    add_run_options(p, batch_size_default=EVAL_BATCH_SIZE, batch_size_auto=True)
    p.add_argument(
        "--strategy",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"prompt strategies ({', '.join(strategies)}; default: all unless --attack is given; 'none' for none)",
    )
    p.add_argument(
        "--intervention",
        nargs="+",
        default=None,
        metavar="SPEC",
        help=f"activation interventions at keyword positions (default: {' '.join(interventions)} unless --attack is "
        "given; see below)",
    )
    p.add_argument(
        "--attack",
        nargs="+",
        default=None,
        metavar="SPEC",
        help=f"conditions of any kind by registered name ({', '.join(attack_names())}) or 'all' for the full "
        "battery ('battery': all but the keyword-emphasis conditions; 'emphasis': those alone); see below",
    )
    p.add_argument(
        "--keywords",
        default="attribution",
        choices=["attribution", "data", "both"],
        help="keyword source: KeyTokens of occlusion on the original model, the data's keywords, or both",
    )
    p.add_argument(
        "--keywords-from",
        default=None,
        metavar="RUN_DIR",
        help="take the KeyTokens from this `unpact attribute` run (word-level occlusion of the bare answer on the "
        "original model, the same items) instead of computing them",
    )
    p.add_argument(
        "--keytoken-alpha",
        type=float,
        default=DEFAULT_KEYTOKEN_ALPHA,
        metavar="ALPHA",
        help=f"KeyTokens: keep words >= ALPHA x the largest contribution (0 < ALPHA <= 1; "
        f"default {DEFAULT_KEYTOKEN_ALPHA})",
    )
    p.add_argument(
        "--keytoken-beta",
        type=int,
        default=DEFAULT_KEYTOKEN_BETA,
        metavar="BETA",
        help=f"KeyTokens: all positive words if fewer than BETA (>= 1; default {DEFAULT_KEYTOKEN_BETA})",
    )
    p.add_argument(
        "--no-controls", action="store_true", help="skip the random-word, original-model and retain controls"
    )
    p.add_argument("--ablation", action="store_true", help="also sweep the interventions over layers x position groups")
    p.add_argument(
        "--ablation-layers",
        default=None,
        metavar="LAYERS",
        help="layers for --ablation, e.g. 0-29 or 0+5+10 (default: 10 evenly spaced)",
    )
    add_max_new_tokens_option(p)
    p.set_defaults(run=run)


def default_names(kind: str) -> list[str]:
    """The keyword-emphasis conditions of ``kind`` that run by default (``unpact_mech.attacks.DEFAULT_ATTACKS``)."""
    from unpact_mech.attacks import ATTACKS, DEFAULT_ATTACKS

    return [name for name in DEFAULT_ATTACKS if ATTACKS[name].kind == kind]


def _lists(values: list[str] | None, default: list[str]) -> list[str]:
    """The names given (``none``: no names), or ``default`` when the option was not given."""
    if values is None:
        return default
    return [] if values == ["none"] else values


def run(args: argparse.Namespace) -> int:
    from unpact_mech.attacks import get_attack, resolve_attacks, select_keywords
    from unpact_mech.attacks.keywords import keywords_from_run
    from unpact_mech.attribution.keytokens import check_keytoken_rule
    from unpact_mech.data import load_items
    from unpact_mech.distributed import is_main_process
    from unpact_mech.errors import InputError
    from unpact_mech.io import atomic_output_dir, check_outside, prepare_output_path, run_record
    from unpact_mech.models import load_model
    from unpact_mech.models.batch_size import resolve_for_items
    from unpact_mech.recovery import RecoveryConfig, check_compatible, recovered_lineage, run_recovery
    from unpact_mech.recovery.ablation import SweepConfig, layer_sweep, sweep_size
    from unpact_mech.recovery.outputs import write_recovery
    from unpact_mech.runtime import seed_everything
    from unpact_mech.scoring.prompt import prompt_format_from_name
    from unpact_mech.scoring.tokens import encode_item
    from unpact_mech.syntax import parse_int_list

    seed_everything(args.seed)
    main = is_main_process()  # under `accelerate launch`: joins the process group first (a GPU per process)
    # cheap validation first: nothing is loaded or written for bad names/values
    prepare_output_path(args.out, overwrite=args.overwrite)
    from unpact_mech.attacks.battery import WORDS, expand_specs

    named = args.attack is not None
    strategies = [
        get_attack(name, kind="strategy") for name in _lists(args.strategy, [] if named else default_names("strategy"))
    ]
    interventions = [
        get_attack(text, kind="intervention")
        for text in _lists(args.intervention, [] if named else default_names("intervention"))
    ]
    battery = args.attack or []
    for spec in battery:  # names and options checked now; model-dependent checks after loading, before any work
        if spec not in WORDS:
            get_attack(spec)
    if named and not battery + strategies + interventions:
        raise InputError("--attack: name at least one condition (or 'all')")
    try:
        check_keytoken_rule(args.keytoken_alpha, args.keytoken_beta)
    except InputError as err:
        raise InputError(f"--{str(err).replace('_', '-')}") from None
    try:
        ablation_layers = parse_int_list(args.ablation_layers) if args.ablation_layers else None
    except ValueError:
        raise InputError(
            f"--ablation-layers: cannot parse {args.ablation_layers!r} (use e.g. 0-29 or 0+5+10)"
        ) from None
    if args.keywords_from and args.keywords == "data":
        raise InputError("--keywords-from gives the attribution keywords: use it with --keywords attribution or both")
    items = load_items(args.data, schema=args.schema)
    original = load_model(args.original, **model_kwargs(args))
    unlearned = load_model(args.unlearned, **model_kwargs(args))
    check_compatible(original, unlearned)
    args.batch_size = resolve_for_items(unlearned, args.batch_size, items, args.max_new_tokens, default=EVAL_BATCH_SIZE)
    for model in (original, unlearned):
        check_outside(args.out, model.source_dir, "--out")
        model.prompt_format = prompt_format_from_name(args.prompt_format, model.tokenizer)
    extra = resolve_attacks(expand_specs(battery, unlearned), unlearned) if battery else []
    attacks = [a.resolve(unlearned) for a in strategies + interventions]  # layer/head errors before any work
    labels = {a.label for a in attacks}
    attacks += [a for a in extra if a.label not in labels]
    if ablation_layers is not None:
        bad = [L for L in ablation_layers if not 0 <= L < unlearned.shape.n_layers]
        if bad:
            raise InputError(
                f"--ablation-layers: layer {bad[0]} out of range (model has layers 0..{unlearned.shape.n_layers - 1})"
            )

    keywords = None
    if args.keywords_from:  # read, not computed: every mismatch is an input error before any evaluation
        encoded = [encode_item(original, it) for it in items]
        read = keywords_from_run(
            args.keywords_from, original, items, encoded, keytoken_alpha=args.keytoken_alpha,
            keytoken_beta=args.keytoken_beta,
        )  # fmt: skip
        keywords = select_keywords(args.keywords, original, items, encoded, attribution=read)
    swept = [a.configure(layers=None) for a in interventions] or ["patch", "scale"]
    sweep_cfg = SweepConfig(
        interventions=swept,
        layers=ablation_layers,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        shard=True,  # under `accelerate launch`: each process evaluates its share of the items (no-op on one)
    )

    def announce(plan) -> None:
        """The plan and the estimate, on stderr, once the baselines have run."""
        if args.quiet or not main:  # the main process prints and writes (every process of a launch computes alike)
            return
        line, extra = plan.describe(), {}
        if args.ablation and plan.n_eligible:
            evaluations, answers, extra["the layer ablation"] = sweep_size(
                sweep_cfg, unlearned.shape.n_layers, plan.n_eligible
            )
            line += f"; then the layer ablation: {evaluations} evaluations, {answers} answers"
        print(line, file=sys.stderr)
        print(plan.estimate(extra), file=sys.stderr)

    cfg = RecoveryConfig(
        attacks=attacks,
        keyword_source=args.keywords,
        keytoken_alpha=args.keytoken_alpha,
        keytoken_beta=args.keytoken_beta,
        controls=not args.no_controls,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        shard=True,
    )
    result = run_recovery(
        original, unlearned, items, cfg, keywords=keywords, progress=not args.quiet and main, on_plan=announce
    )
    sweep = None
    if args.ablation:
        eligible = set(result.eligible_ids)
        chosen = [(it, kw) for it, kw in zip(items, result.item_keywords) if it.id in eligible]
        sweep = layer_sweep(
            original,
            unlearned,
            [it for it, _ in chosen],
            [kw for _, kw in chosen],
            sweep_cfg,
            progress=not args.quiet and main,
        )
    if not main:
        return 0

    run_meta = run_record(
        "recover",
        config=vars(args) | {"attack_settings": [a.settings() for a in result.attacks]},
        seed=args.seed,
        data=args.data,
        lineage=recovered_lineage(unlearned, result.attacks, args.keywords, args.original),
    )
    summary = result.summary | {
        "original": str(args.original),
        "unlearned": str(args.unlearned),
        "backend": args.backend,
    }
    if args.keywords_from:
        summary["keywords_from"] = str(args.keywords_from)
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_recovery(tmp, result, run_meta, summary, sweep)
    for line in summary_lines(summary, result.rates):
        print(line)
    print(f"-> {args.out}")
    return 0


def summary_lines(summary: dict, rates) -> list[str]:
    """The terminal summary: eligibility, collateral damage on utility and retain items apart, and one line per
    condition (rate [exact 95% interval], random control, exact McNemar p against it, Holm-adjusted)."""
    from unpact_mech.commands.common import fmt

    lines = []
    if summary.get("utility_note"):
        lines.append(f'warning: {summary["utility_note"]} (add items with "split": "utility")')
    lines.append(
        f"{summary['n_eligible']} of {summary['n_forget']} forget items forgotten (eligible for recovery); "
        f"destructive rate on utility items {fmt(summary.get('utility_destructive_rate'))}, "
        f"on retain (trained-on) items {fmt(summary.get('retain_destructive_rate'))}"
    )
    accuracy = [
        f"{split} {fmt(summary.get(f'original_{split}_accuracy'))} -> {fmt(summary.get(f'unlearned_{split}_accuracy'))}"
        for split in ("forget", "retain", "utility")
        if summary.get(f"n_{split}")
    ]
    lines.append(f"accuracy original -> unlearned: {', '.join(accuracy)}")
    if summary.get("eligible_note"):
        lines.append(f"note: {summary['eligible_note']}")
    for r in rates.itertuples():
        lines.append(
            f"  {r.kind:<12} {r.condition:<24} recovery {fmt(r.recovery_rate)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
            f"  random control {fmt(r.random_control_rate)}  p {fmt(r.p_vs_random, '.3f')}"
            f" (Holm {fmt(r.p_vs_random_holm, '.3f')})  original {fmt(r.original_accuracy_before)} ->"
            f" {fmt(r.original_accuracy_after)}  gap closed {fmt(r.gap_fraction)}"
        )
    worst = summary.get("worst_case_by_family") or {}
    if len(worst) > 1:
        lines.append("worst case per family (the most recovering condition of each; a maximum is optimistic):")
        for family, w in worst.items():
            lines.append(
                f"  {family:<22} {w['condition']:<28} {w['recovered']}/{w['n_eligible']} = {fmt(w['rate'])}"
                f" [{fmt(w['ci_low'])}, {fmt(w['ci_high'])}]  (max of {w['of']})"
            )
    return lines
