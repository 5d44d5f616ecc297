"""Recovery by quantization: ask a re-quantized copy of the model.

Unlearning moves weights by about the learning rate (~1e-5 per step); a quantization bin is far wider, so rounding
an unlearned model to a grid can put most of its weights back where the original's were (Zhang et al., "Catastrophic
Failure of LLM Unlearning via Quantization", ICLR 2025). The ``quantize`` condition asks a copy of the model whose
weights went through one quantize -> dequantize round trip; the recovery runner also applies it to the ORIGINAL
model (its "original model" column), which is the control a quantization attack needs: a grid that costs the
original its answers cannot be credited with bringing them back.

Schemes (``scheme=``), all applied to the weight matrices of the transformer blocks (attention and MLP projections)
unless noted; blocks / groups run along the input dimension (the last axis of a ``(d_out, d_in)`` weight):

==========  ==============================================================================================
``source``  the model's own source file's per-tensor GGUF types, read from that file (the embedded SmolLM2:
            every block weight Q4_1, the token embedding Q8_0 — tied to the unembedding —, norms F32)
``q4_1``    GGUF Q4_1 (blocks of 32: ``w ≈ d·q + m``, q in 0..15, ``d = (max - min) / 15``, ``m = min``)
``q8_0``    GGUF Q8_0 (blocks of 32: ``w ≈ d·q``, q in -127..127, ``d = max|w| / 127``)
``int8``    symmetric round-to-nearest, groups of ``group_size``: ``s = max|w_g| / 127``, ``q = round(w / s)``
``int4``    the same with 4 bits: ``s = max|w_g| / 7``, q in -7..7
``f16``     IEEE half precision (the 16-bit "quantization": an exact no-op for weights that are already fp16
            values, e.g. a model loaded from fp16 files; a bin is one fp16 ulp, ``2**(floor(log2|w|) - 10)``)
==========  ==============================================================================================

The embedded SmolLM2 weights were dequantised from that Q4_1 GGUF, so they lie on the ``source`` grid: the round
trip returns the original's weights unchanged (tested), and any recovery under ``scheme=source`` is unlearning
undone by rounding alone. :func:`grid_report` says, per tensor, how far unlearning moved the weights compared with
the bin width and how many land back on the original's quantized value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from unpact_mech.attacks.base import ModelAttack
from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.attacks.base import AttackEnv
    from unpact_mech.models.hooked import HookedLM

SCHEMES = ("source", "q4_1", "q8_0", "int8", "int4", "f16")
#: GGUF block length of Q4_1 and Q8_0.
GGUF_BLOCK = 32
#: Parameter names that are not block weights (embedding and unembedding), by substring.
_NOT_BLOCK = ("embed", "lm_head", "wte", "wpe")


def _rtn_groups(w: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor, int]:
    """``w`` as (groups, group_size) float64 — each row of the last axis cut into groups of ``group_size``, the last
    group of a row shorter when the axis is not a multiple (zero-padded here: zeros change no ``max|w_g|``) —, each
    group's scale ``max|w_g| / qmax`` (G, 1), and ``qmax``."""
    qmax = 2 ** (bits - 1) - 1
    rows = w.detach().double().reshape(-1, w.shape[-1])
    g = torch.nn.functional.pad(rows, (0, -w.shape[-1] % group_size)).reshape(-1, group_size)
    return g, g.abs().amax(dim=1, keepdim=True) / qmax, qmax


def _unpad(g: Tensor, w: Tensor) -> Tensor:
    """Groups of :func:`_rtn_groups` back to ``w``'s shape (the zero padding dropped)."""
    n_rows = w.numel() // w.shape[-1]
    return g.reshape(n_rows, -1)[:, : w.shape[-1]].reshape(w.shape)


def rtn_quantize(w: Tensor, bits: int, group_size: int) -> Tensor:
    """Symmetric round-to-nearest quantize -> dequantize, per group of ``group_size`` along the last axis.

    With ``qmax = 2**(bits-1) - 1`` and a group ``w_g``: ``s = max|w_g| / qmax`` (1 for an all-zero group),
    ``q = clamp(round(w_g / s), -qmax, qmax)``; returns ``q * s`` with ``w``'s shape and dtype. When the last axis
    is not a multiple of ``group_size`` the last group of each row is shorter (SmolLM2's 576 inputs in groups of
    128: four of 128 and one of 64).
    """
    g, scale, qmax = _rtn_groups(w, bits, group_size)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(g / scale), -qmax, qmax)
    return _unpad(q * scale, w).to(w.dtype)


def rtn_bin_width(w: Tensor, bits: int, group_size: int) -> Tensor:
    """Per element, the width of its round-to-nearest bin (the group's scale ``s``), shape of ``w``."""
    g, scale, _ = _rtn_groups(w, bits, group_size)
    return _unpad(scale.expand_as(g), w)


def gguf_roundtrip(w: Tensor, qtype_name: str) -> Tensor:
    """``w`` through GGUF ``qtype_name`` (``Q4_1``, ``Q8_0``, ... or ``F32``: unchanged) with the pinned ``gguf``
    package's reference quantizer; blocks along the last axis."""
    if qtype_name in ("F32", "F16", "BF16"):
        return w.detach().clone()
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[qtype_name]
    if w.shape[-1] % GGUF_BLOCK:
        raise InputError(f"GGUF {qtype_name}: last axis {w.shape[-1]} is not a multiple of {GGUF_BLOCK}")
    data = w.detach().to(torch.float32).cpu().numpy()
    back = quants.dequantize(quants.quantize(data, qtype), qtype)
    return torch.from_numpy(np.ascontiguousarray(back)).reshape(w.shape).to(w.dtype)


def gguf_bin_width(w: Tensor, qtype_name: str) -> Tensor:
    """Per element, the GGUF block's step ``d`` (Q4_1: (max - min) / 15; Q8_0: max|w| / 127), shape of ``w``."""
    g = w.detach().double().reshape(-1, GGUF_BLOCK)
    if qtype_name == "Q4_1":
        d = (g.amax(dim=1, keepdim=True) - g.amin(dim=1, keepdim=True)) / 15
    elif qtype_name == "Q8_0":
        d = g.abs().amax(dim=1, keepdim=True) / 127
    else:
        raise InputError(f"bin width of GGUF type {qtype_name} is not implemented (Q4_1, Q8_0)")
    return d.expand_as(g).reshape(w.shape)


def is_block_weight(name: str, tensor: Tensor) -> bool:
    """A 2-D weight of a transformer block (attention or MLP projection), not the embedding or unembedding."""
    return tensor.ndim == 2 and name.endswith("weight") and not any(s in name for s in _NOT_BLOCK)


def named_weights(model: "HookedLM") -> dict[str, Tensor]:
    """The model's tensors under HF names, each storage once (a tied unembedding appears as the embedding)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor
    return out


@functools.lru_cache(maxsize=4)
def gguf_file_types(path: str) -> dict[str, str]:
    """GGUF tensor name -> type name, read from the file at ``path`` (once per process: the reader parses the whole
    file, vocabulary included, which takes tens of seconds on the embedded model)."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def source_gguf_types(model: "HookedLM") -> dict[str, str]:
    """Parameter name -> GGUF type name of the tensor in the file the model came from (the embedded SmolLM2's Q4_1
    GGUF; lineage base ``smollm2``). Any other model: :class:`InputError` (use a uniform scheme)."""
    base = model.lineage[0].get("spec") if model.lineage else model.name
    if base != "smollm2":
        raise InputError(
            f"quantize scheme 'source': model {model.name!r} has no GGUF source file (only the embedded smollm2 "
            "does); use scheme q4_1, q8_0, int8 or int4"
        )
    import gguf

    from unpact_mech.models.smollm2 import GGUF_FILE, gguf_dir

    file_types = gguf_file_types(str(gguf_dir() / GGUF_FILE))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.shape.n_layers)
    out: dict[str, str] = {}
    for name in named_weights(model):
        stem = name.removesuffix(".weight")
        mapped = names.get_name(stem)
        if mapped is None or f"{mapped}.weight" not in file_types:
            raise InputError(f"quantize scheme 'source': parameter {name} has no tensor in {GGUF_FILE}")
        out[name] = file_types[f"{mapped}.weight"]
    return out


def scheme_plan(model: "HookedLM", scheme: str) -> dict[str, str]:
    """Parameter name -> the scheme applied to it (``Q4_1``, ``Q8_0``, ``int8``, ``int4``); untouched ones left out."""
    if scheme == "source":
        return {n: t for n, t in source_gguf_types(model).items() if t not in ("F32", "F16", "BF16")}
    kind = scheme.upper() if scheme.startswith("q") else scheme
    return {n: kind for n, w in named_weights(model).items() if is_block_weight(n, w)}


def roundtrip(w: Tensor, kind: str, group_size: int) -> Tensor:
    """``w`` quantized and dequantized by ``kind`` (a GGUF type name, ``int8``, ``int4`` or ``f16``)."""
    if kind == "f16":
        return w.detach().to(torch.float16).to(w.dtype)
    if kind in ("int8", "int4"):
        return rtn_quantize(w, int(kind[3:]), group_size)
    return gguf_roundtrip(w, kind)


def bin_width(w: Tensor, kind: str, group_size: int) -> Tensor:
    """Per element of ``w``, the width of its bin under ``kind`` (the group's or GGUF block's step; for ``f16`` one
    fp16 ulp at the element, subnormals included), shape of ``w``."""
    if kind == "f16":
        exponent = torch.floor(torch.log2(w.detach().double().abs().clamp_min(2.0**-14)))
        return torch.pow(2.0, exponent - 10)
    if kind in ("int8", "int4"):
        return rtn_bin_width(w, int(kind[3:]), group_size)
    return gguf_bin_width(w, kind)


@dataclass(frozen=True)
class Quantize(ModelAttack):
    """Ask a quantize -> dequantize copy of the model (``scheme``, ``group_size`` for int8 / int4; see the module
    docstring). The copy is made once per model and condition; the model itself is not changed."""

    name: str = "quantize"
    description: str = "the model's weights rounded to a quantization grid and back"
    family: str = "quantization"
    scheme: str = "source"
    group_size: int = 32

    original_arm_shared: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ("scheme", "group_size")

    @property
    def label(self) -> str:
        return f"quantize[{self.scheme}{'/g' + str(self.group_size) if self.scheme.startswith('int') else ''}]"

    def resolve(self, model: "HookedLM") -> "Quantize":
        if self.scheme not in SCHEMES:
            raise InputError(f"quantize: unknown scheme {self.scheme!r}; choose from: {', '.join(SCHEMES)}")
        if self.group_size < 1:
            raise InputError(f"quantize: group_size must be >= 1, got {self.group_size}")
        if self.scheme == "source":
            source_gguf_types(model)  # fails here, before any work, for a model without a GGUF source
        elif self.scheme in ("q4_1", "q8_0"):
            weights = named_weights(model)
            bad = [n for n in scheme_plan(model, self.scheme) if weights[n].shape[-1] % GGUF_BLOCK]
            if bad:
                n = weights[bad[0]].shape[-1]
                raise InputError(
                    f"quantize scheme {self.scheme}: {bad[0]} has {n} inputs, not a multiple of the GGUF block "
                    f"{GGUF_BLOCK}"
                )
        return self

    def transform(self, model: "HookedLM", env: "AttackEnv") -> "HookedLM":
        """The quantized copy; for the unlearned model also records :func:`grid_report` against the original
        (``details/<label>.grid.csv``: per tensor ‖Δw‖ against the bin width, share back on the original's value)."""
        if env.unlearned is not None and model is env.unlearned:
            report = grid_report(env.original, model, self.scheme, self.group_size)
            env.record(self.label, "grid", report.assign(layer=report["parameter"].map(layer_of)))
        return quantized_copy(model, self.scheme, self.group_size)


def quantized_copy(model: "HookedLM", scheme: str, group_size: int = 32) -> "HookedLM":
    """A frozen copy of ``model`` with every weight of :func:`scheme_plan` rounded to its grid and back."""
    plan = scheme_plan(model, scheme)
    copy = model.reference_copy()
    weights = named_weights(copy)
    copy.load_state_dict({name: roundtrip(weights[name], kind, group_size) for name, kind in plan.items()})
    copy.name = f"{model.name} (quantize[{scheme}])"
    return copy


def layer_of(name: str) -> float:
    """The block index in an HF parameter name (``model.layers.3.mlp.up_proj.weight`` -> 3), NaN outside blocks."""
    import re

    m = re.search(r"\.(\d+)\.", name)
    return float(m.group(1)) if m else float("nan")


def grid_report(original: "HookedLM", unlearned: "HookedLM", scheme: str, group_size: int = 32) -> pd.DataFrame:
    """Per quantized tensor: how far unlearning moved it against the grid of ``scheme``.

    Columns: ``parameter``, ``kind``, ``n`` (elements), ``delta_norm`` = ‖w_u − w_o‖₂, ``mean_abs_delta``,
    ``mean_bin_width`` (the original's bins), ``delta_over_bin`` = mean |Δw| / mean bin width, ``moved`` = share of
    elements with w_u ≠ w_o, ``back_on_original`` = share of elements quantized to the original's grid point
    (|Q(w_u) − Q(w_o)| < half the original's bin width: a group's scale may itself move a little), ``moved_back`` =
    the same share among the moved elements.
    """
    plan = scheme_plan(original, scheme)
    before, after = named_weights(original), named_weights(unlearned)
    rows = []
    for name, kind in plan.items():
        w_o, w_u = before[name], after[name]
        delta = (w_u - w_o).double()
        moved = delta != 0
        width = bin_width(w_o, kind, group_size)
        gap = (roundtrip(w_u, kind, group_size) - roundtrip(w_o, kind, group_size)).double().abs()
        same = gap < 0.5 * width  # the same grid point (a group's scale may itself move a little)
        rows.append({
            "parameter": name, "kind": kind, "n": w_o.numel(), "delta_norm": float(delta.norm()),
            "mean_abs_delta": float(delta.abs().mean()),
            "mean_bin_width": float(width.mean()),
            "moved": float(moved.double().mean()), "back_on_original": float(same.double().mean()),
            "moved_back": float(same[moved].double().mean()) if bool(moved.any()) else float("nan"),
        })  # fmt: skip
    df = pd.DataFrame(rows)
    if len(df):
        df["delta_over_bin"] = df["mean_abs_delta"] / df["mean_bin_width"]
    return df


def _kind_of(scheme: str) -> str:
    """A uniform scheme name as :func:`roundtrip` takes it (``q4_1`` -> ``Q4_1``; ``int8``, ``Q8_0`` ... unchanged)."""
    if scheme == "source":
        raise InputError("weight_shift_vs_bin: scheme 'source' needs the model; pass scheme_plan(model, 'source')")
    return scheme.upper() if scheme.lower() in ("q4_1", "q8_0") else scheme


def weight_shift_vs_bin(
    base: dict[str, Tensor], trained: dict[str, Tensor], scheme: str | dict[str, str], group_size: int = 32
) -> pd.DataFrame:
    """Per matrix, how far training moved the weights against the width of their quantization bins (a pure
    function of the two state dicts: e.g. ``TrainResult.base`` and the trained weights).

    ``scheme``: one kind for every 2-D tensor of ``base`` (``q4_1``, ``q8_0``, ``int8``, ``int4``, ``f16`` or a GGUF
    type name), or a mapping name -> kind (e.g. :func:`scheme_plan` of the model; tensors not in it are skipped).
    Columns: ``parameter``, ``kind``, ``n`` (elements), ``mean_abs_delta`` = mean |w_t − w_b|, ``mean_bin_width`` =
    the mean width of the BASE weights' bins (:func:`bin_width`), ``delta_over_bin`` = their ratio, and
    ``quant_changed`` = the share of elements whose quantized value moved to another grid point,
    |Q(w_t) − Q(w_b)| >= half the base's bin width (as in :func:`grid_report`: a block's own scale may move a little).
    """
    plan = scheme if isinstance(scheme, dict) else {n: _kind_of(scheme) for n, w in base.items() if w.ndim == 2}
    rows = []
    for name, kind in plan.items():
        if name not in base:
            continue
        w_b, w_t = base[name], trained[name]
        delta = (w_t.double() - w_b.double()).abs()
        width = bin_width(w_b, kind, group_size).double()
        gap = (roundtrip(w_t, kind, group_size).double() - roundtrip(w_b, kind, group_size).double()).abs()
        mean_width = float(width.mean())
        rows.append({
            "parameter": name, "kind": kind, "n": w_b.numel(), "mean_abs_delta": float(delta.mean()),
            "mean_bin_width": mean_width,
            "delta_over_bin": float(delta.mean()) / mean_width if mean_width > 0 else float("nan"),
            "quant_changed": float((gap >= 0.5 * width).double().mean()),
        })  # fmt: skip
    columns = ["parameter", "kind", "n", "mean_abs_delta", "mean_bin_width", "delta_over_bin", "quant_changed"]
    return pd.DataFrame(rows, columns=columns)
