"""One generic edit-at-positions and the tiny edits activation attacks are made of (after TransformerLens'
``patching.py``, which composes one generic patching function with small setters).

:func:`edit_at_positions` turns an :data:`Edit` into an intervention factory: for every batch it builds the
per-row position mask, optionally runs a SOURCE model on the same tokens (caching the edited hooks), and at every
chosen layer replaces the activations at the masked positions by ``edit(act, ctx)``. Positions are prompt
positions; generated tokens are never edited (their positions lie beyond the prompt mask). An edit sees only the
selected vectors, shape (N, ...), and an :class:`EditContext` (the layer, the source model's activations at the same
positions, and which evaluated item each vector belongs to), and returns new vectors of the same shape.

====================  =====================================================================  ==================
edit                  new activation at an emphasised position (h: this model, h_src: source)  used by
====================  =====================================================================  ==================
:func:`scale_by`       ``factor * h``                                                        ``scale``
:func:`copy_source`    ``h_src``                                                             ``patch``
:func:`add_per_item`   ``h + c * d_L[i]`` (a direction per layer and evaluated item i)       ``steer``
====================  =====================================================================  ==================

:func:`reweight_attention` is the attention-side counterpart (PASTA): it acts on the key axis of a pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.models.hooks import HookContext, Intervention, hook_name, query_mask

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.batching import BatchLayout, InterventionFactory


@dataclass(frozen=True)
class EditContext:
    """What an edit knows about the N vectors it edits: ``layer``; ``source`` — the source model's activations at the
    same positions (N, ...), or None without a source; ``items`` — (N,) the evaluated item (index into the
    ``positions`` the factory was built with) each vector belongs to."""

    layer: int
    source: Tensor | None
    items: Tensor


Edit = Callable[[Tensor, EditContext], Tensor]
"""``edit(act, ctx) -> new act`` for the activations at the selected positions (N, ...)."""


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
        items = torch.as_tensor(list(layout.items), dtype=torch.long)
        return [
            Intervention(name, _apply(mask, edit, L, donor.get(name), items), f"{label}@{name}", prompt_only=True)
            for L, name in names.items()
        ]

    return build


def _apply(mask: Tensor, edit: Edit, layer: int, donor: Tensor | None, items: Tensor):
    def fn(act: Tensor, ctx: HookContext) -> Tensor | None:
        sel = query_mask(mask, ctx)  # (B, T): emphasised prompt positions among this forward's queries
        if not sel.any():
            return None
        src = None if donor is None else donor[:, ctx.query_positions.clamp(max=donor.shape[1] - 1)][sel]
        rows = sel.nonzero()[:, 0].cpu()  # batch row of every selected vector
        out = act.clone()
        out[sel] = edit(act[sel], EditContext(layer, src, items[rows]))
        return out

    return fn


def scale_by(factor: float) -> Edit:
    """``h <- factor * h``."""
    return lambda act, ctx: act * factor


def copy_source(act: Tensor, ctx: EditContext) -> Tensor:
    """``h <- h_src`` (activation patching from the source model)."""
    if ctx.source is None:
        raise ValueError("copy_source needs a source model")
    return ctx.source


def add_per_item(directions: Mapping[int, Tensor], coefficient: float) -> Edit:
    """``h <- h + coefficient * d_L[i]``: ``directions[L]`` is (n_items, d_model), one row per evaluated item."""
    return lambda act, ctx: act + coefficient * directions[ctx.layer][ctx.items].to(act)


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
