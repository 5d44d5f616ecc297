"""Attention-path contributions: how much each (layer, head, source position) moves *directly* into the answer.

An attention layer's output at a query position q is a sum over heads and key (source) positions s::

    attn_out[q] = sum_h sum_s pattern[h, q, s] * v[s, kv(h)] @ W_O[h]  +  b_O

(GQA: head h reads key/value head ``kv(h) = h // (H / H_kv)``). Dotting each term with the readout direction
``a_j`` of the target (:mod:`unpact_mech.attribution.residual`: the answer token's unembedding, through the final
norm with its scale frozen) at the readout positions ``q_j`` gives::

    C[L, h, s] = sum_j pattern[L, h, q_j, s] * (v[L, s, kv(h)] @ W_O[L, h]) . a_j

Approximations, stated plainly:

* direct path only — the contribution of what the head writes *to the answer logit through the unembedding*;
  its effect through later layers (e.g. as input to later heads or MLPs) is not counted;
* the final norm's scale is frozen at its value on this forward (the norm is linear given that scale);
* "source position s" means the residual stream at s when layer L reads it — which already mixes information
  from positions <= s moved by earlier layers — not the input token s alone;
* for the ``logprob`` target the readout is the mean answer-token logit (LP's log-sum-exp normaliser is shared
  and not attributed; see :mod:`unpact_mech.attribution.targets`).

Exact identity (tested): ``sum_{h, s} C[L, h, s] + b_O . sum_j a_j`` = the attention layer's direct
contribution in the residual decomposition. Only ``attn.hook_v``, ``attn.hook_pattern`` and ``hook_attn_out`` of
the chosen layers and the final residual stream are cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from unpact_mech.attribution.forward import cached_row_forward
from unpact_mech.attribution.math import head_source_contributions, sum_over_units
from unpact_mech.attribution.residual import frozen_readout
from unpact_mech.attribution.results import AttentionPaths, TokenAttribution
from unpact_mech.attribution.targets import Target, scored_mask
from unpact_mech.attribution.units import (
    ItemLike,
    PreparedItem,
    keyword_unit_mask,
    position_labels,
    prepare_for,
    prompt_units,
)
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import hook_name
from unpact_mech.scoring.batching import InterventionFactory
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


def check_layers(model: "HookedLM", layers: Sequence[int] | None) -> tuple[int, ...]:
    """Validate a layer selection (None = all layers); out-of-range layers raise :class:`InputError`."""
    n = model.shape.n_layers
    layers = one_or_many(layers)  # one int is one layer
    if layers is None:
        return tuple(range(n))
    bad = [L for L in layers if not 0 <= L < n]
    if bad:
        raise InputError(f"layer {bad[0]} out of range (model has layers 0..{n - 1})")
    return tuple(sorted(set(layers)))


def attention_paths(
    model: "HookedLM",
    item: ItemLike,
    *,
    target: str | Target = "answer",
    layers: Sequence[int] | None = None,
    interventions: InterventionFactory | None = None,
) -> AttentionPaths:
    """Direct contributions per (layer, head, source position) for the item (module docstring)."""
    chosen = check_layers(model, layers)
    prepared, tgt = prepare_for(model, item, target)
    last = hook_name(model.shape.n_layers - 1, "hook_resid_post")
    names = [last] + [hook_name(L, k) for L in chosen for k in ("attn.hook_v", "attn.hook_pattern", "hook_attn_out")]
    tf, c, logits = cached_row_forward(model, prepared, names, interventions)
    with torch.no_grad():
        fr = frozen_readout(model, tgt.readout(prepared.prefix_len, prepared.answer_ids), c[last], logits, tf.start)
        q = fr.readout.positions
        contributions, bias_terms, layer_direct = [], [], []
        for L in chosen:
            pattern = c[hook_name(L, "attn.hook_pattern")][:, q, :]  # (H, J, T)
            contributions.append(
                head_source_contributions(pattern, c[hook_name(L, "attn.hook_v")], model.weights.W_O(L), fr.directions)
            )
            b_O = model.weights.b_O(L)
            bias_terms.append(fr.directions.sum(0) @ b_O.float() if b_O is not None else torch.zeros(()))
            layer_direct.append((c[hook_name(L, "hook_attn_out")][q].float() * fr.directions).sum())
        target_value = float(tgt.value(logits[None], tf.targets, scored_mask(tf.answer_mask, prepared.n_context))[0])
    return AttentionPaths(
        item_id=prepared.item_id,
        split=prepared.split,
        target=tgt.name,
        layers=chosen,
        contributions=torch.stack(contributions)
        if contributions
        else torch.zeros(0, model.shape.n_heads, len(prepared.sequence)),
        bias_terms=torch.stack(bias_terms) if bias_terms else torch.zeros(0),
        layer_direct=torch.stack(layer_direct) if layer_direct else torch.zeros(0),
        labels=tuple(position_labels(model, prepared)),
        readout_value=fr.value,
        target_value=target_value,
    )


def source_attribution(paths: AttentionPaths, prepared: PreparedItem, level: str = "token") -> TokenAttribution:
    """A token view of attention paths: ``C`` summed over the selected layers and all heads, per question unit
    (a word = the sum over its tokens). It is what the keyword hit rate and the token heatmap use."""
    units = prompt_units(prepared.prompt, level)
    return TokenAttribution(
        item_id=prepared.item_id,
        split=prepared.split,
        method="attention",
        target=paths.target,
        level=level,
        units=tuple(units),
        scores=sum_over_units(paths.by_source(), [u.positions for u in units]),
        target_value=paths.target_value,
        is_keyword=tuple(keyword_unit_mask(prepared, units)),
    )
