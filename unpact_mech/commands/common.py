"""Options and steps shared by the sub-commands (so every command spells them the same way)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def batch_size_arg(text: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto`` (:mod:`unpact_mech.models.batch_size`)."""
    return "auto" if text == "auto" else positive_int(text)


def add_model_options(p: argparse.ArgumentParser, *, flag: str = "--model", default: str | None = "smollm2") -> None:
    p.add_argument(
        flag,
        default=default,
        required=default is None,
        metavar="SPEC",
        help="smollm2 (embedded SmolLM2-135M-Instruct), tiny, or a local HF model directory"
        + (f" (default: {default})" if default else ""),
    )


def device_option(text: str) -> str:
    """``--device`` value, checked against this machine when parsed (before any data or weights are read)."""
    from unpact_mech.models.device import device_problem

    why = device_problem(text)
    if why:
        raise argparse.ArgumentTypeError(why)
    return text


def add_backend_option(p: argparse.ArgumentParser) -> None:
    """--backend (choices: the registered backends), --device, --dtype: how the model is loaded
    (:func:`model_kwargs`)."""
    from unpact_mech.models.backends import BACKENDS
    from unpact_mech.models.device import DEVICE_FORMS, DTYPES

    p.add_argument(
        "--backend",
        default=BACKENDS[0],
        choices=list(BACKENDS),
        help=f"interpretability backend wrapping the model (default: {BACKENDS[0]})",
    )
    p.add_argument(
        "--device",
        default="auto",
        type=device_option,
        metavar="DEVICE",
        help=f"{DEVICE_FORMS}; auto = CUDA if present, then MPS, else the CPU (default: auto)",
    )
    p.add_argument(
        "--device-map",
        default=None,
        choices=["auto", "balanced", "sequential"],
        help="spread the model's layers over every visible GPU in one process (for a model that does not fit one GPU; "
        "with --device auto or cuda)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=list(DTYPES),
        help="weights and activations; log-probs, losses and attributions accumulate in float32 (default: float32)",
    )


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``load_model`` keywords of the parsed --backend / --device / --dtype (and --allow-pickle where the command has
    it)."""
    kwargs: dict[str, Any] = {"backend": args.backend, "device": args.device, "dtype": args.dtype}
    if getattr(args, "device_map", None):
        kwargs["device_map"] = args.device_map
    if hasattr(args, "allow_pickle"):
        kwargs["allow_pickle"] = args.allow_pickle
    return kwargs


def add_seed_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def add_max_new_tokens_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS

    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"greedy answer length cap; an answer that reaches it is flagged 'truncated' (default: "
        f"{DEFAULT_MAX_NEW_TOKENS}, fits a one-sentence answer)",
    )


def add_run_options(
    p: argparse.ArgumentParser,
    *,
    data_default: str | None = "builtin:real_facts",
    batch_size_default: int | None = 16,
    batch_size_help: str = "items per forward pass",
    batch_size_auto: bool = False,
) -> None:
    """--backend, --device, --dtype, --data, --schema, --out, --overwrite, --seed, --batch-size, --prompt-format,
    --allow-pickle, --quiet."""
    add_backend_option(p)
    p.add_argument(
        "--data",
        default=data_default,
        required=data_default is None,
        metavar="FILE",
        help="QA items: .jsonl, .csv, a datasets directory, or builtin:real_facts / builtin:synthetic_facts"
        + (f" (default: {data_default})" if data_default else ""),
    )
    p.add_argument(
        "--schema",
        default="auto",
        choices=["auto", "unpact", "tofu", "muse", "wmdp"],
        help="record schema of --data (default: auto)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory (created, with any missing parents; must not exist unless --overwrite)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out directory (atomically, at the end)"
    )
    add_seed_option(p)
    if batch_size_auto:
        batch_size_help += "; auto = the largest that fits the device (probed on a GPU; on the CPU the default unless "
        batch_size_help += "half the free memory holds fewer)"
    p.add_argument(
        "--batch-size",
        type=batch_size_arg if batch_size_auto else positive_int,
        default=batch_size_default,
        metavar="N" + ("|auto" if batch_size_auto else ""),
        help=batch_size_help + (f" (default: {batch_size_default})" if batch_size_default is not None else ""),
    )
    p.add_argument(
        "--prompt-format",
        default="auto",
        choices=["auto", "chat", "plain"],
        help="auto = the chat template if the tokenizer has one, else 'Question: ...\\nAnswer:'",
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights from a model directory"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_run_inputs(
    args: argparse.Namespace, *, spec_attr: str = "model", check_items: Callable[[list], Any] | None = None
) -> tuple[Any, list]:
    """Validate --out, load items (cheap errors first) and run ``check_items`` on them, then load the model (--out
    must not lie inside its directory) and apply --prompt-format."""
    from unpact_mech.data import load_items
    from unpact_mech.io import check_outside, prepare_output_path
    from unpact_mech.models import load_model
    from unpact_mech.scoring.prompt import prompt_format_from_name

    prepare_output_path(args.out, overwrite=args.overwrite)
    items = load_items(args.data, schema=args.schema)
    if check_items is not None:
        check_items(items)
    model = load_model(getattr(args, spec_attr), **model_kwargs(args))
    check_outside(args.out, model.source_dir, "--out")
    model.prompt_format = prompt_format_from_name(args.prompt_format, model.tokenizer)
    return model, items


def fmt(value, spec: str = ".2f") -> str:
    """A number for the terminal; ``—`` for a missing one (None or NaN), never ``nan``."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)
