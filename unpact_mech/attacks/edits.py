"""One generic edit-at-positions and the tiny edits activation attacks are made of (after TransformerLens'
``patching.py``, which composes one generic patching function with small setters).

:func:`edit_at_positions` turns an :data:`Edit` into an intervention factory: for every batch it builds the
per-row position mask, optionally runs a SOURCE model on the same tokens (caching the edited hooks), and at every
chosen layer replaces the activations at the masked positions by ``edit(act, source_act, layer)``. Positions are
prompt positions; generated tokens are never edited (their positions lie beyond the prompt mask). An edit sees only
the selected vectors, shape (N, ...), and returns new ones of the same shape.

==================  =======================================================================  ==================
edit                new activation at an emphasised position (h: this model, h_src: source)  used by
==================  =======================================================================  ==================
:func:`scale_by`     ``factor * h``                                                          ``scale``
:func:`copy_source`  ``h_src``                                                               ``patch``
:func:`add_per_layer` ``h + c * d_L``                                                        ``steer``
==================  =======================================================================  ==================

:func:`reweight_attention` is the attention-side counterpart (PASTA): it acts on the key axis of a pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.models.hooks import HookContext, Intervention, hook_name, query_mask

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.batching import BatchLayout, InterventionFactory

Edit = Callable[[Tensor, "Tensor | None", int], Tensor]
"""``edit(act, source_act, layer) -> new act``: the activations at the selected positions (N, ...), the source
model's activations at the same positions (N, ...) or None, and the layer."""


def edit_at_positions(
    hook: str,
    layers: Sequence[int],
    positions: Sequence[Sequence[int]],
    edit: Edit,
    *,
    source: "HookedLM | None" = None,
    label: str = "",
) -> "InterventionFactory":
    """Factory applying ``edit`` at ``blocks.L.<hook>`` for L in ``layers``, at ``positions[i]`` of evaluated item i.

    ``hook`` is a per-position kind such as ``hook_resid_post`` ((B, T, d) activations). With ``source``, the source
    model runs once per batch on the same tokens and its activations at the edited hooks are passed to ``edit``.
    No layers, or no position in a batch, is an exact no-op.
    """
    names = {int(L): hook_name(int(L), hook) for L in layers}

    def build(layout: "BatchLayout") -> list[Intervention]:
        if not names:
            return []
        mask = layout.mask([positions[i] for i in layout.items])
        donor: dict[str, Tensor] = {}
        if source is not None:
            with torch.no_grad():
                donor = source.forward(
                    layout.input_ids, attention_mask=layout.attention_mask, cache=list(names.values())
                ).cache
        return [
            Intervention(name, _apply(mask, edit, L, donor.get(name)), f"{label}@{name}") for L, name in names.items()
        ]

    return build


def _apply(mask: Tensor, edit: Edit, layer: int, donor: Tensor | None):
    def fn(act: Tensor, ctx: HookContext) -> Tensor | None:
        sel = query_mask(mask, ctx)  # (B, T): emphasised prompt positions among this forward's queries
        if not sel.any():
            return None
        src = None if donor is None else donor[:, ctx.query_positions.clamp(max=donor.shape[1] - 1)][sel]
        out = act.clone()
        out[sel] = edit(act[sel], src, layer)
        return out

    return fn


def scale_by(factor: float) -> Edit:
    """``h <- factor * h``."""
    return lambda act, source, layer: act * factor


def copy_source(act: Tensor, source: Tensor | None, layer: int) -> Tensor:
    """``h <- h_src`` (activation patching from the source model)."""
    if source is None:
        raise ValueError("copy_source needs a source model")
    return source


def add_per_layer(directions: Mapping[int, Tensor], coefficient: float) -> Edit:
    """``h <- h + coefficient * d_L`` with one direction (d_model,) per layer."""
    return lambda act, source, layer: act + coefficient * directions[layer].to(act)


def reweight_attention(pattern: Tensor, key_mask: Tensor, factor: float, heads: Sequence[int] | None) -> Tensor:
    """PASTA: ``A'[b,h,q,k] = A[b,h,q,k] * w[b,k] / sum_k A[b,h,q,k] * w[b,k]`` with w = 1 on emphasised keys and
    ``factor`` elsewhere, for the selected heads. pattern (B, H, Tq, Tk); key_mask (B, Tk) bool."""
    weights = torch.where(key_mask, 1.0, factor).to(pattern.dtype)[:, None, None, :]
    sel = slice(None) if heads is None else list(heads)
    out = pattern.clone()
    scaled = pattern[:, sel] * weights
    out[:, sel] = scaled / scaled.sum(-1, keepdim=True).clamp_min(torch.finfo(pattern.dtype).tiny)
    return out


def key_mask(mask: Tensor, n_keys: int) -> Tensor:
    """(B, T0) prompt mask -> (B, n_keys): keys beyond the prompt (generated tokens) are not emphasised."""
    if n_keys <= mask.shape[1]:
        return mask[:, :n_keys]
    return torch.cat([mask, mask.new_zeros(mask.shape[0], n_keys - mask.shape[1])], dim=1)
