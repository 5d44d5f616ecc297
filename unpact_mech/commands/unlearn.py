"""``unpact unlearn``: unlearn the forget items of a data set; the output directory is a loadable model SPEC."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unpact_mech.commands.common import add_max_new_tokens_option, add_model_options, add_run_options, positive_int
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE

HELP = "unlearn the forget items (GA, NPO, SimNPO, RMU, task vector, ...); writes a loadable model directory"
HP_FLAGS = {
    "alpha": "--alpha",
    "beta": "--beta",
    "gamma": "--gamma",
    "c": "--steering-coef",
    "layer": "--layer",
    "scale": "--scale",
    "prompt_attacks": "--prompt-attacks",
    "activation_attacks": "--activation-attacks",
    "keyword_weight": "--keyword-weight",
    "retain_attacks": "--retain-attacks",
    "late_weight": "--late-weight",
    "late_layer": "--late-layer",
    "late_answer_weight": "--late-answer-weight",
    "steer_attacks": "--steer-attacks",
    "steer_attack_coef": "--steer-attack-coef",
    "noise_weight": "--noise-weight",
    "noise_scale": "--noise-scale",
    "quant_weight": "--quant-weight",
}


def _variant_of(cls, registered):
    """The registered method ``cls`` is a variant of (a base class with the same hyperparameter names and recipe)."""
    for base in cls.__mro__[1:]:
        if (
            base in registered
            and base.hyperparameters.keys() == cls.hyperparameters.keys()
            and base.recipe == cls.recipe
        ):
            return base
    return None


def _epilog() -> str:
    from unpact_mech.unlearning import HYPERPARAMETERS, UNLEARNING_METHODS

    lines = ["methods and their defaults (recipes measured on smollm2 + builtin:real_facts, docs/unlearning.md):"]
    width = max(12, *(len(name) for name in UNLEARNING_METHODS))
    for name, cls in UNLEARNING_METHODS.items():
        r = cls.recipe
        hp = ", ".join(f"{k}={v:g}" for k, v in cls.hyperparameters.items())
        parent = _variant_of(cls, UNLEARNING_METHODS.values())
        if parent is not None:  # a registered variant: only what differs
            diff = {k: v for k, v in cls.hyperparameters.items() if parent.hyperparameters[k] != v}
            hp = f"as {parent.name} but " + ", ".join(f"{k}={v:g}" for k, v in diff.items())
        lines.append(
            f"  {name:<{width}} lr {r.lr:g}, {r.steps} steps, batch {r.batch_size}" + (f"; {hp}" if hp else "")
        )
        lines.append(f"  {'':<{width}} {cls.summary}")
    lines.append("hyperparameters (only the ones a method takes are accepted):")
    flag_width = max(16, *(len(flag) for flag in HP_FLAGS.values()))
    lines.extend(f"  {HP_FLAGS[k]:<{flag_width}} {text}" for k, text in HYPERPARAMETERS.items())
    lines.append(
        'data: items with "split": "forget" are unlearned; "retain" items feed the retain term; all '
        "items are evaluated (greedy answer, contains judge) before, every --eval-every steps, and after."
    )
    lines.append(
        "distributed: accelerate launch --multi_gpu --num_processes N -m unpact_mech.cli unlearn ... "
        "(DDP; on a CPU-only machine accelerate uses gloo; --batch-size is per process); add --fsdp to shard the "
        "model over the processes (FSDP2) instead of replicating it."
    )
    return "\n".join(lines)


def add_parser(sub) -> None:
    from unpact_mech.unlearning import LR_SCHEDULES, UNLEARNING_METHODS

    p = sub.add_parser(
        "unlearn",
        help=HELP,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=HELP + ". Writes the model (safetensors, config, tokenizer), run.json (lineage "
        "base -> unlearned), results.csv (long: item_id, split, metric, value, step, method), "
        "summary.json, dynamics.csv/.png and training_log.csv.",
    )
    p.add_argument(
        "--method",
        required=True,
        choices=list(UNLEARNING_METHODS),
        metavar="NAME",
        help=f"unlearning method: {', '.join(UNLEARNING_METHODS)}",
    )
    add_model_options(p)
    add_run_options(
        p,
        batch_size_default=None,
        batch_size_help="forget items per micro-batch (and as many retain items), per process "
        "(default: the method's recipe)",
    )
    t = p.add_argument_group("training (unset values come from the method's recipe, see below)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps")
    t.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    t.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step (default: 1)")
    t.add_argument("--lr-schedule", default="constant", choices=list(LR_SCHEDULES), help="(default: constant)")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default: 0)")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm, 0 = off (default: 1.0)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    t.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each decoder layer's activations in the backward instead of storing them (HF activation "
        "checkpointing): less memory (docs/bigger_models.md), about one more forward per step, the same weights",
    )
    t.add_argument(
        "--fsdp",
        action="store_true",
        help="shard parameters, gradients and AdamW state over the processes of a launch (torch FSDP2) instead of "
        "replicating them (DDP); needs >= 2 processes: accelerate launch --config_file configs/accelerate/ddp.yaml "
        "-m unpact_mech.cli unlearn --fsdp ... (docs/unlearning.md, FSDP)",
    )
    s = p.add_argument_group("stop rules (evaluate after every step; the recipe's --steps is then the most it trains)")
    s.add_argument(
        "--stop-when-forget-below",
        type=float,
        default=None,
        metavar="ACC",
        help="stop at the first step whose forget accuracy is <= ACC (e.g. 0.15)",
    )
    s.add_argument(
        "--max-utility-drop",
        type=float,
        default=None,
        metavar="DROP",
        help='stop before the first step whose accuracy on the held-out "utility" items falls more than DROP below '
        "its start (that step is undone), e.g. 0.05",
    )
    t.add_argument(
        "--trainable",
        default=None,
        metavar="REGEX",
        help="train only parameters whose HF name matches (re.search), e.g. 'model\\.layers\\.(5|6|7)\\.mlp\\.' "
        "(default: all; rmu: the MLP down-projections of layers l-2..l)",
    )
    h = p.add_argument_group(
        "method hyperparameters (defaults per method, see below; on the built-in tiny model RMU and keyguard take "
        "layers that it has)"
    )
    h.add_argument("--alpha", type=float, default=None, help="α, weight of the retain term")
    h.add_argument("--beta", type=float, default=None, help="β, NPO/SimNPO inverse temperature")
    h.add_argument("--gamma", type=float, default=None, help="γ, SimNPO margin")
    h.add_argument(
        "--steering-coef", "--c", dest="c", type=float, default=None, metavar="C", help="c, RMU steering coefficient"
    )
    h.add_argument("--layer", type=int, default=None, help="ℓ, RMU layer")
    h.add_argument("--scale", type=float, default=None, help="s, task-vector scale")
    h.add_argument(
        "--prompt-attacks", type=float, default=None, metavar="W", help="keyguard: w_p (rewritten forget prompts)"
    )
    h.add_argument(
        "--activation-attacks",
        type=float,
        default=None,
        metavar="W",
        help="keyguard: w_a (original activations patched in at KeyTokens)",
    )
    h.add_argument("--keyword-weight", type=float, default=None, metavar="W", help="keyguard: w_k (KeyToken positions)")
    h.add_argument(
        "--retain-attacks", type=float, default=None, metavar="W", help="keyguard: w_r (rewritten retain prompts)"
    )
    h.add_argument(
        "--late-weight", type=float, default=None, metavar="W", help="keyguard: w_l (misdirection at the late layer)"
    )
    h.add_argument(
        "--late-layer",
        type=int,
        default=None,
        metavar="L",
        help="keyguard: ℓ', the late layer (negative = from the end)",
    )
    h.add_argument(
        "--late-answer-weight",
        type=float,
        default=None,
        metavar="W",
        help="keyguard: w_la (misdirection at the late layer on the answer tokens only)",
    )
    h.add_argument(
        "--steer-attacks", type=float, default=None, metavar="W", help="keyguard: w_s (forget rows under steering)"
    )
    h.add_argument(
        "--steer-attack-coef",
        type=float,
        default=None,
        metavar="C",
        help="keyguard: c_s, the training steer coefficient",
    )
    h.add_argument(
        "--noise-weight", type=float, default=None, metavar="W", help="keyguard: w_n (forget terms at noisy weights)"
    )
    h.add_argument(
        "--noise-scale", type=float, default=None, metavar="S", help="keyguard: σ, weight noise relative to rms(W)"
    )
    h.add_argument(
        "--quant-weight",
        type=float,
        default=None,
        metavar="W",
        help="keyguard: w_q (forget terms at the re-quantized weights)",
    )
    d = p.add_argument_group("evaluation and checkpoints")
    d.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="also evaluate every N steps (default: at each checkpoint, else only before and after)",
    )
    d.add_argument(
        "--checkpoint-every", type=int, default=0, help="save a checkpoint every N steps (default: 0 = none)"
    )
    d.add_argument(
        "--checkpoint-dir", default=None, metavar="DIR", help="where checkpoints go (default: OUT.checkpoints)"
    )
    d.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    d.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints after a successful run")
    d.add_argument(
        "--eval-batch-size",
        type=positive_int,
        default=EVAL_BATCH_SIZE,
        help=f"items per evaluation forward (default: {EVAL_BATCH_SIZE})",
    )
    add_max_new_tokens_option(d)
    p.set_defaults(run=run)


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    if args.checkpoint_dir:
        return Path(args.checkpoint_dir).expanduser().absolute()
    out = Path(args.out).expanduser().absolute()
    return out.with_name(out.name + ".checkpoints")


def given_hyperparameters(args: argparse.Namespace) -> dict[str, float | None]:
    """The hyperparameter flags, where unset filled from the built-in model's method presets
    (:data:`~unpact_mech.pipeline.presets.METHOD_OVERRIDES`: RMU's and keyguard's layers on the 2-layer ``tiny``
    model, which has no layer 7), as the demo and the experiments use them; None = the method's default."""
    from unpact_mech.pipeline.presets import train_overrides

    preset = train_overrides(str(args.model), args.method).get("hyperparameters", {})
    return {k: preset.get(k) if getattr(args, k) is None else getattr(args, k) for k in HP_FLAGS}


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from unpact_mech.commands.common import load_run_inputs
    from unpact_mech.distributed import check_training_launch, launched_processes
    from unpact_mech.errors import InputError
    from unpact_mech.io import check_outside, prepare_output_path, run_record
    from unpact_mech.runtime import seed_everything
    from unpact_mech.unlearning import UnlearningFailed, get_unlearning_method, resolve_config, unlearn, write_unlearned
    from unpact_mech.unlearning.checkpoint import CheckpointStore
    from unpact_mech.unlearning.fsdp import ONE_PROCESS, join_process_group
    from unpact_mech.unlearning.run import TRAIN_OPTIONS

    seed_everything(args.seed)
    # cheap checks first: nothing is loaded or written for bad names/values
    check_training_launch(fsdp=args.fsdp)  # accelerate's FSDP plugin without --fsdp / DeepSpeed: one line, exit 2
    if args.fsdp and launched_processes() < 2:
        raise InputError(ONE_PROCESS)
    method = get_unlearning_method(args.method, **given_hyperparameters(args))
    stop_rule = args.stop_when_forget_below is not None or args.max_utility_drop is not None
    eval_every = args.eval_every if args.eval_every is not None else (1 if stop_rule else args.checkpoint_every)
    # every TrainConfig field has a flag of the same name; eval_every is implied by a stop rule
    config = resolve_config(method, **{k: getattr(args, k) for k in TRAIN_OPTIONS} | {"eval_every": eval_every})
    prepare_output_path(args.out, overwrite=args.overwrite)
    ckpt_dir = _checkpoint_dir(args) if (args.checkpoint_every or args.resume) else None
    if ckpt_dir is not None:
        if ckpt_dir.exists() and not ckpt_dir.is_dir():
            raise InputError(f"--checkpoint-dir {ckpt_dir}: exists and is not a directory")
        stale = CheckpointStore(ckpt_dir, {}).latest()
        if stale is not None and not args.resume and not args.overwrite:
            raise InputError(
                f"{ckpt_dir} holds checkpoints of an earlier run: pass --resume to continue it or "
                "--overwrite to start over"
            )
    model, items = load_run_inputs(args)
    check_outside(args.out, model.source_dir, "--out")
    label = str(args.data)
    main = join_process_group()[0] == 0 if args.fsdp else PartialState().is_main_process
    if args.resume and main and (ckpt_dir is None or CheckpointStore(ckpt_dir, {}).latest() is None):
        print(f"unpact: no checkpoint in {ckpt_dir}; starting from step 0", file=sys.stderr)
    try:
        result = unlearn(
            model,
            items,
            method,
            trainable=args.trainable,
            checkpoint_dir=ckpt_dir,
            resume=args.resume,
            eval_batch_size=args.eval_batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=not args.quiet,
            data_label=label,
            **vars(config),
        )
    except UnlearningFailed as err:
        if main:
            print(f"unpact: error: {err}", file=sys.stderr)
        return 1
    if not main:
        return 0
    run_meta = run_record(
        "unlearn",
        config=vars(args) | {"resolved": vars(config), "hyperparameters": dict(method.hp)},
        seed=args.seed,
        data=args.data,
        lineage=model.lineage,
        models={"model": model},
    )
    write_unlearned(model, result, args.out, run=run_meta, overwrite=args.overwrite)
    if ckpt_dir is not None and not args.keep_checkpoints:
        CheckpointStore(ckpt_dir, {}).clear()
    for line in summary_lines(method.name, result.summary, args.out):
        print(line)
    if result.summary.get("forget_note"):  # the recipe did not forget: say so, and what to change
        print(f"warning: {result.summary['forget_note']}", file=sys.stderr)
    return 0


def summary_lines(name: str, s: dict, out) -> list[str]:
    """The terminal summary: forget, held-out utility and retain (trained-on) accuracy before -> after, how long it
    trained and why it stopped, and a warning when the data has no utility items."""
    from unpact_mech.commands.common import fmt

    lines = []
    if s.get("utility_note"):
        lines.append(f'warning: {s["utility_note"]} (add items with "split": "utility")')
    if s["forget_accuracy_before"] is not None:
        lines.append(
            f"{name}: forget accuracy {fmt(s['forget_accuracy_before'])} -> {fmt(s['forget_accuracy_after'])}, "
            f"utility {fmt(s['utility_accuracy_before'])} -> {fmt(s['utility_accuracy_after'])}, "
            f"retain (trained on) {fmt(s['retain_accuracy_before'])} -> {fmt(s['retain_accuracy_after'])}, "
            f"weight delta {s['weight_delta_norm']:.3g} ({s['steps_run']} steps, {s['train_seconds']:.0f} s) -> {out}"
        )
    if s.get("stop_reason"):
        lines.append(f"stopped: {s['stop_reason']}")
    return lines
