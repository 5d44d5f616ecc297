"""Gradient x input at the input embeddings, and gradient x activation at any hook point.

* :func:`grad_x_input`: ``a_p = (df/de_p) . e_p`` for the token embedding ``e_p`` of every prompt position
  (one forward + one backward of the teacher-forced row); question units get their tokens' sum.
* :func:`grad_x_activation`: ``a = (df/dh) . h`` per position (and per head for ``attn.hook_v`` /
  ``attn.hook_z``, per head and key position for ``attn.hook_pattern``) at any hooks of the vocabulary
  (:mod:`unpact_mech.models.hooks`), e.g. every layer's ``hook_resid_post``.

Parameters are frozen during the backward (no weight gradients are computed); f is a named target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from unpact_mech.attribution.forward import forward_embeddings, input_ids
from unpact_mech.attribution.math import grad_times_input, sum_over_units
from unpact_mech.attribution.results import ActivationAttribution, TokenAttribution
from unpact_mech.attribution.targets import Target
from unpact_mech.attribution.units import (
    ItemLike,
    keyword_unit_mask,
    position_labels,
    prepare_for,
    prompt_units,
)
from unpact_mech.models.hooks import KEY_AXIS_KINDS, parse_hook
from unpact_mech.scoring.batching import InterventionFactory
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


def grad_x_input(
    model: "HookedLM",
    item: ItemLike,
    *,
    level: str = "token",
    target: str | Target = "answer",
    interventions: InterventionFactory | None = None,
) -> TokenAttribution:
    """Gradient x input of the target with respect to the prompt's token embeddings.

    ``position_scores`` (T_prompt,) holds every prompt position (template and BOS included); ``scores`` the
    question units (a word = the sum over its tokens).
    """
    prepared, tgt = prepare_for(model, item, target)
    units = prompt_units(prepared.prompt, level)
    with model.frozen(), torch.enable_grad():
        emb = model.embed(input_ids(prepared)).detach().requires_grad_(True)
        values, _ = forward_embeddings(model, prepared, emb, tgt, interventions=interventions)
        (grad,) = torch.autograd.grad(values.sum(), emb)
    per_position = grad_times_input(grad[0], emb[0].detach())[: prepared.prompt_len]
    return TokenAttribution(
        item_id=prepared.item_id,
        split=prepared.split,
        method="grad_x_input",
        target=tgt.name,
        level=level,
        units=tuple(units),
        scores=sum_over_units(per_position, [u.positions for u in units]),
        target_value=float(values.detach()[0]),
        is_keyword=tuple(keyword_unit_mask(prepared, units)),
        position_scores=per_position,
    )


def _reduce(kind: str, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient x activation of one row, reduced over the feature axis (see :class:`ActivationAttribution`)."""
    if kind.endswith(KEY_AXIS_KINDS):  # scores / pattern (H, T_q, T_k): sum over queries -> (H, T_k)
        return (act * grad).sum(-2)
    return grad_times_input(grad, act)  # (T, d) -> (T,), (T, H, d_h) -> (T, H)


def grad_x_activation(
    model: "HookedLM",
    item: ItemLike,
    hooks: Sequence[str],
    *,
    target: str | Target = "answer",
    interventions: InterventionFactory | None = None,
) -> ActivationAttribution:
    """Gradient x activation of the target at each hook in ``hooks`` (validated: unknown names raise
    :class:`~unpact_mech.errors.InputError`). Scores cover every input position of the teacher-forced sequence
    (all but the last answer token, which no target logit reads)."""
    sites = [parse_hook(h, model.shape.n_layers) for h in one_or_many(hooks) or ()]
    prepared, tgt = prepare_for(model, item, target)
    names = [s.name for s in sites]
    with model.frozen(), torch.enable_grad():
        emb = model.embed(input_ids(prepared)).detach().requires_grad_(True)
        values, cache = forward_embeddings(model, prepared, emb, tgt, cache=names, interventions=interventions)
        grads = torch.autograd.grad(values.sum(), [cache[n] for n in names], allow_unused=True)
    scores = {}
    for site, grad in zip(sites, grads):
        act = cache[site.name].detach()[0]
        grad = torch.zeros_like(act) if grad is None else grad[0]
        scores[site.name] = _reduce(site.kind, act, grad)
    return ActivationAttribution(
        item_id=prepared.item_id,
        split=prepared.split,
        target=tgt.name,
        scores=scores,
        labels=tuple(position_labels(model, prepared))[:-1],
        target_value=float(values.detach()[0]),
    )
