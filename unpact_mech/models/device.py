"""Where a model runs and in which precision: ``--device auto|cpu|cuda|cuda:N|mps`` and
``--dtype float32|bfloat16|float16`` (``load_model(..., device=, dtype=)``).

``auto`` is the first accelerator present (CUDA, then Apple's MPS), else the CPU; the default dtype is float32 on
every device, so a CPU machine keeps today's numbers. Asking for a device this machine does not have is a one-line
:class:`~unpact_mech.errors.InputError` (exit 2), raised when the option is parsed, before any data or weights are
read.

The model's weights and activations take the dtype; what the toolkit accumulates does not: log-probs, losses,
scores and attributions are computed from ``logits.float()`` / float32 sums (:mod:`unpact_mech.scoring.logprob`,
:mod:`unpact_mech.attribution.math`), and unlearning in a half precision keeps float32 master weights and float32
AdamW state (:mod:`unpact_mech.unlearning.loop`).
"""

from __future__ import annotations

import re

import torch

from unpact_mech.errors import InputError

#: ``--dtype`` names -> torch dtypes.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` if CUDA is present, else ``mps`` if present, else ``cpu``; other names are checked
    against this machine (:class:`InputError` ``--device SPEC: <why>``, :func:`device_problem`)."""
    why = device_problem(spec)
    if why:
        raise InputError(f"--device {spec}: {why}")
    kind = str(spec).strip().lower()
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    return torch.device(kind)


def device_problem(spec: str | torch.device) -> str:
    """Why ``spec`` cannot be used on this machine ("" when it can): not a device name, or no such device here."""
    match = _DEVICE_RE.match(str(spec).strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        return f"expected {DEVICE_FORMS}"
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            return f"CUDA is not available on this machine (torch {torch.__version__}, {build})"
        if index is not None and int(index) >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if kind == "mps" and not _mps_available():
        return "Apple MPS is not available on this machine"
    return ""


def resolve_dtype(name: str | torch.dtype = "float32") -> torch.dtype:
    """``float32`` | ``bfloat16`` | ``float16`` (or a torch dtype among them) -> the torch dtype."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InputError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
        return name
    try:
        return DTYPES[str(name).strip().lower()]
    except KeyError:
        raise InputError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The ``--dtype`` name of a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return next(k for k, v in DTYPES.items() if v == dtype)
