"""``unpact evaluate``: per-item accuracy, teacher-forced log-prob and gold first-token rank; with ``--mc-scoring
loglik``, multiple-choice items scored by each option's log-likelihood instead (scoring/multiple_choice.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unpact_mech.commands.common import (
    add_max_new_tokens_option,
    add_model_options,
    add_run_options,
    load_run_inputs,
)
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE

HELP = "evaluate a model on QA items (accuracy / log-prob / rank per item)"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help=HELP,
        description=HELP + ". Writes results.csv (long), items.csv (one row "
        "per item with the greedy answer), summary.json and run.json.",
    )
    add_model_options(p)
    add_run_options(p, batch_size_default=EVAL_BATCH_SIZE, batch_size_auto=True)
    p.add_argument(
        "--judge",
        default="contains",
        choices=["contains", "rouge_l"],
        help="correctness judge on the greedy answer (default: contains)",
    )
    add_max_new_tokens_option(p)
    p.add_argument(
        "--mc-scoring",
        default="generate",
        choices=["generate", "loglik"],
        help="generate = judge the greedy answer (default); loglik = score each option's log-likelihood after the "
        "prompt, as lm-evaluation-harness does (multiple-choice items only: the wmdp schema's choices; no "
        "generation, so --judge and --max-new-tokens do not apply)",
    )
    p.add_argument(
        "--mc-continuation",
        default="letter",
        choices=["letter", "option"],
        help="with --mc-scoring loglik: score the option's letter (default, lm-eval's WMDP) or its text",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from unpact_mech.distributed import is_main_process
    from unpact_mech.io import atomic_output_dir, run_record
    from unpact_mech.models.batch_size import resolve_for_items
    from unpact_mech.runtime import seed_everything
    from unpact_mech.scoring.evaluate import write_evaluation
    from unpact_mech.scoring.multiple_choice import require_choices

    seed_everything(args.seed)
    main = is_main_process()  # under `accelerate launch`: joins the process group first (a GPU per process)
    loglik = args.mc_scoring == "loglik"
    check = (lambda items: require_choices(items, str(args.data))) if loglik else None
    model, items = load_run_inputs(args, check_items=check)  # items without choices: exit 2 before the model loads
    args.batch_size = resolve_for_items(model, args.batch_size, items, args.max_new_tokens, default=EVAL_BATCH_SIZE)
    per_item, summary, metrics = (_loglik if loglik else _generate)(args, model, items)  # items split over processes
    if not main:  # under `accelerate launch`: every process has every row; the main one writes
        return 0
    run = run_record(
        "evaluate", config=vars(args), seed=args.seed, data=args.data, lineage=model.lineage, models={"model": model}
    )
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_evaluation(tmp, per_item, summary, run, model=model.name, metrics=metrics)
    by_split = ", ".join(f"{k} {v:.2f}" for k, v in summary["accuracy_by_split"].items())
    if loglik:
        print(
            f"accuracy {summary['accuracy']:.3f} (length-normalised {summary['accuracy_norm']:.3f}) over "
            f"{summary['n_items']} items ({by_split}); option log-likelihoods -> {args.out}"
        )
        return 0
    print(
        f"accuracy {summary['accuracy']:.3f} over {summary['n_items']} items ({by_split}); "
        f"mean log-prob {summary['mean_logprob']:.3f} -> {args.out}"
    )
    if summary["n_truncated_wrong"]:
        print(
            f"warning: {summary['n_truncated_wrong']} answers judged wrong reached --max-new-tokens "
            f"{args.max_new_tokens} without ending (column 'truncated' in items.csv); a larger cap may change them",
            file=sys.stderr,
        )
    return 0


def _generate(args: argparse.Namespace, model, items: list) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    """Greedy answer judged + teacher-forced LP and rank (scoring/evaluate.py)."""
    from unpact_mech.distributed import evaluate_items_sharded
    from unpact_mech.scoring import summarize_evaluation
    from unpact_mech.scoring.evaluate import METRICS
    from unpact_mech.scoring.tokens import encode_items

    encoded = encode_items(model, items)  # context-length errors before any output exists
    per_item = evaluate_items_sharded(  # evaluate_items, each process of a launch on its share of the items
        model,
        items,
        encoded=encoded,
        judge=args.judge,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    summary = summarize_evaluation(per_item) | {"model": model.name, "backend": model.backend.name, "judge": args.judge}
    return per_item, summary, METRICS


def _loglik(args: argparse.Namespace, model, items: list) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    """Each option's log-likelihood after the prompt, lm-eval's acc and acc_norm (scoring/multiple_choice.py)."""
    from unpact_mech.distributed import map_frame, process_rank_and_count
    from unpact_mech.scoring.multiple_choice import MC_METRICS, score_multiple_choice, summarize_multiple_choice

    rank, _ = process_rank_and_count()

    per_item = map_frame(  # each process of a launch scores its share of the items
        lambda share: score_multiple_choice(
            model,
            share,
            continuation=args.mc_continuation,
            batch_size=args.batch_size,
            source=str(args.data),
            progress=not args.quiet and rank == 0,
        ),
        items,
    )
    summary = summarize_multiple_choice(per_item) | {
        "model": model.name,
        "backend": model.backend.name,
        "mc_scoring": "loglik",
        "continuation": args.mc_continuation,
    }
    return per_item, summary, MC_METRICS
