"""Model specs -> :class:`HookedLM`.

A SPEC is ``smollm2`` (the embedded SmolLM2-135M-Instruct), ``tiny`` (a small Llama trained in-process on the
built-in synthetic facts) or a path to a local HF model directory (such as an ``unpact unlearn`` output).
Safety: never ``trust_remote_code``; weights only from safetensors unless ``allow_pickle=True``; local files only;
the model directory is only read.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unpact_mech.errors import InputError
from unpact_mech.models.backends import BACKENDS
from unpact_mech.models.hooked import HookedLM

if TYPE_CHECKING:
    import torch

BUILTIN_SPECS = ("smollm2", "tiny")
#: ``load_model(device_map=)`` / ``--device-map`` placements (Hugging Face's names).
DEVICE_MAPS = ("auto", "balanced", "sequential")


@dataclass(frozen=True)
class ModelSource:
    """A resolved spec: the directory to read and the lineage recorded with it."""

    spec: str
    path: Path
    lineage: list[dict[str, Any]] = field(default_factory=list)


def _read_lineage(path: Path) -> list[dict[str, Any]]:
    for fname in ("unpact_model.json", "run.json"):
        f = path / fname
        if f.is_file():
            try:
                lineage = json.loads(f.read_text()).get("lineage")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(lineage, list) and lineage:
                return lineage
    return []


def resolve_spec(spec: str | Path, *, allow_pickle: bool = False) -> ModelSource:
    """Map a SPEC to a model directory, building the cache for built-in specs on first use."""
    spec_str = str(spec)
    if spec_str == "smollm2":
        from unpact_mech.models.smollm2 import ensure_smollm2

        path = ensure_smollm2()
    elif spec_str == "tiny":
        from unpact_mech.models.tiny import ensure_tiny

        path = ensure_tiny()
    else:
        path = Path(spec_str).expanduser()
        if not path.exists():
            if "/" not in spec_str and "\\" not in spec_str and not spec_str.startswith("."):
                raise InputError(
                    f"unknown model spec {spec_str!r}: expected one of {', '.join(BUILTIN_SPECS)} "
                    "or a path to a local HF model directory"
                )
            raise InputError(f"model directory {spec_str} does not exist")
        if not path.is_dir():
            raise InputError(f"model {spec_str}: not a directory (expected a local HF model directory)")
        if not (path / "config.json").is_file():
            raise InputError(f"model directory {spec_str}: no config.json")
        has_safetensors = any(path.glob("*.safetensors"))
        has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
        if not has_safetensors:
            if has_pickle and not allow_pickle:
                raise InputError(
                    f"model directory {spec_str}: only pickle weights (.bin); refusing to load them "
                    "(convert to safetensors, or pass --allow-pickle if you trust the file)"
                )
            if not has_pickle:
                raise InputError(f"model directory {spec_str}: no weights (*.safetensors) found")
    lineage = _read_lineage(path) or [{"role": "base", "spec": spec_str, "path": str(path.absolute())}]
    return ModelSource(spec_str, path, lineage)


def load_model(
    spec: str | Path = "smollm2",
    *,
    backend: str = "transformer_lens",
    allow_pickle: bool = False,
    prompt_format=None,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "float32",
    device_map: str | None = None,
) -> HookedLM:
    """Load a SPEC into a :class:`HookedLM` (eager attention, the same in both backends) on ``device`` in ``dtype``.

    ``device``: ``auto`` (CUDA, then MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``dtype``:
    ``float32`` (default on every device), ``bfloat16`` or ``float16`` (:mod:`unpact_mech.models.device`). A device
    this machine lacks is an :class:`InputError` before anything is read.

    >>> model = load_model("smollm2", backend="nnsight")  # doctest: +SKIP
    ``device_map``: ``auto`` | ``balanced`` | ``sequential`` spreads the layers over every visible GPU (Hugging Face's
    big-model placement through accelerate; activations move between devices at layer boundaries), for a model that
    does not fit one GPU in a single process; the inputs go to the device of the embedding. Only with ``device``
    ``auto`` or ``cuda``; without a GPU everything is placed on the CPU.

    >>> model = load_model("path/to/llama-3.2-1b", device="cuda", dtype="bfloat16")  # doctest: +SKIP
    >>> model = load_model("path/to/llama-3.1-70b", dtype="bfloat16", device_map="auto")  # doctest: +SKIP
    """
    from unpact_mech.models.device import resolve_device, resolve_dtype

    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if device_map is not None:
        if device_map not in DEVICE_MAPS:
            raise InputError(f"--device-map {device_map!r}: expected one of {', '.join(DEVICE_MAPS)}")
        if str(device) not in ("auto", "cuda"):
            raise InputError(
                f"--device-map spreads a model over the GPUs: use it with --device auto or cuda, not {device}"
            )
    source = resolve_spec(spec, allow_pickle=allow_pickle)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from unpact_mech.models.arch import architecture_for

    try:
        config = AutoConfig.from_pretrained(source.path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise InputError(
            f"model directory {source.spec}: unreadable config.json ({str(err).splitlines()[0]})"
        ) from None
    architecture_for(config)  # unsupported families fail here, before loading weights
    placement: dict[str, Any] = {}  # device_map: HF's placement over the GPUs; without one, everything on the CPU
    if device_map is not None:
        placement["device_map"] = device_map if torch_device.type == "cuda" else {"": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True, trust_remote_code=False)
        hf = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=torch_dtype,
            attn_implementation="eager",
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=None if allow_pickle else True,
            **placement,
        )
    if device_map is None:
        hf.to(torch_device)
    return HookedLM(
        hf,
        tokenizer,
        source_dir=source.path,
        backend=backend,
        name=source.spec if source.spec in BUILTIN_SPECS else source.path.name,
        lineage=source.lineage,
        prompt_format=prompt_format,
    )
