"""Residual-stream contributions: direct logit attribution (DLA) of every component, and the logit lens.

The final residual stream at a readout position is a sum of components::

    resid_final = embed (+ pos_embed) + sum_L attn_out[L] + sum_L mlp_out[L]

With the final norm's scale ``s`` frozen at its value on this forward (an approximation only in what it
*means*: the norm is treated as the linear map it is at this input), the answer logit is linear in that sum, so
each component's direct contribution is ``c . a`` with ``a = s * N(gamma * W_U[:, y])``
(:func:`~unpact_mech.attribution.math.readout_directions`), and the contributions (plus the norm's bias term
for LayerNorm models) sum exactly to the readout — the mean answer-token logit for the ``logprob`` target, the
first answer token's logit for ``first_logit`` (:mod:`unpact_mech.attribution.targets`). "Direct" means the
path straight to the unembedding: what a component does through later layers is not counted here.

Logit lens: the residual stream after each block, through the real (not frozen) final norm and unembedding,
at the answer positions: the answer's LP (through :mod:`unpact_mech.scoring.logprob`; at the last layer it is
the model's LP) and its first token's probability and rank.

Only the hooks needed are cached: ``hook_embed``, ``blocks.0.hook_resid_pre``, every ``hook_attn_out``,
``hook_mlp_out`` and ``hook_resid_post``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.attribution.forward import cached_row_forward
from unpact_mech.attribution.math import (
    apply_final_norm,
    direct_contributions,
    norm_bias_contribution,
    norm_scale,
    readout_directions,
)
from unpact_mech.attribution.results import ResidualContributions
from unpact_mech.attribution.targets import Readout, Target, scored_mask
from unpact_mech.attribution.units import ItemLike, PreparedItem, prepare_for
from unpact_mech.models.hooks import hook_name
from unpact_mech.scoring.batching import InterventionFactory
from unpact_mech.scoring.logprob import masked_mean, token_logprobs, token_rank

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


@dataclass(frozen=True)
class FrozenReadout:
    """A target's readout on one forward: ``directions`` (J, d) with the final norm scale frozen; ``bias`` the
    norm-bias constant; ``value`` the readout computed from the model's actual logits."""

    readout: Readout
    directions: Tensor
    bias: Tensor
    value: float


def frozen_readout(
    model: "HookedLM", readout: Readout, final_resid: Tensor, logits: Tensor, start: int
) -> FrozenReadout:
    """Readout directions at the readout positions of ``final_resid`` (T, d) (the input of the final norm).

    ``logits`` (K, V) are the forward's logits at positions ``start ..`` (to read the actual readout value).
    """
    W = model.weights
    norm = W.final_norm
    with torch.no_grad():
        scales = norm_scale(final_resid[readout.positions], norm)
        directions = readout_directions(W.W_U.float(), readout.tokens, readout.weights, scales, norm)
        bias = norm_bias_contribution(W.W_U.float(), readout.tokens, readout.weights, norm)
        value = (readout.weights * logits[readout.positions - start, readout.tokens].float()).sum()
    return FrozenReadout(readout, directions, bias, float(value))


def answer_positions(prepared: PreparedItem) -> Tensor:
    """Positions whose logits predict the scored answer tokens: ``prefix_len - 1 + k`` (prompt + context)."""
    return torch.arange(prepared.prefix_len - 1, prepared.prefix_len - 1 + len(prepared.answer_ids))


def residual_contributions(
    model: "HookedLM",
    item: ItemLike,
    *,
    target: str | Target = "answer",
    interventions: InterventionFactory | None = None,
) -> ResidualContributions:
    """DLA of embeddings and each layer's attention and MLP output, and the logit lens (module docstring)."""
    prepared, tgt = prepare_for(model, item, target)
    n_layers = model.shape.n_layers
    names = ["hook_embed", hook_name(0, "hook_resid_pre")]
    names += [hook_name(L, k) for L in range(n_layers) for k in ("hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    tf, c, logits = cached_row_forward(model, prepared, names, interventions)
    final = c[hook_name(n_layers - 1, "hook_resid_post")]
    fr = frozen_readout(model, tgt.readout(prepared.prefix_len, prepared.answer_ids), final, logits, tf.start)
    pos = fr.readout.positions

    comps: list[tuple[str, int, Tensor]] = [("embed", -1, c["hook_embed"][pos])]
    pos_embed = c[hook_name(0, "hook_resid_pre")] - c["hook_embed"]
    if pos_embed.abs().max() > 0:  # learned absolute positions (GPT-2)
        comps.append(("pos_embed", -1, pos_embed[pos]))
    for L in range(n_layers):
        comps.append(("attn", L, c[hook_name(L, "hook_attn_out")][pos]))
        comps.append(("mlp", L, c[hook_name(L, "hook_mlp_out")][pos]))
    values = direct_contributions(torch.stack([v for _, _, v in comps]), fr.directions)
    names_out, layers_out = [n for n, _, _ in comps], [L for _, L, _ in comps]
    if model.weights.final_norm.bias is not None:
        values = torch.cat([values, fr.bias.reshape(1).float()])
        names_out.append("norm_bias")
        layers_out.append(-1)

    # logit lens at the answer positions, after every block
    apos = answer_positions(prepared)
    answer = torch.tensor(list(prepared.answer_ids))
    with torch.no_grad():
        resid = torch.stack([c[hook_name(L, "hook_resid_post")][apos] for L in range(n_layers)])  # (L, A, d)
        lens_logits = apply_final_norm(resid.float(), model.weights.final_norm) @ model.weights.W_U.float()  # (L, A, V)
        targets = answer.expand(n_layers, -1)
        lens_lp = masked_mean(token_logprobs(lens_logits, targets), torch.ones_like(targets, dtype=torch.bool))
        first = lens_logits[:, 0]
        first_prob = torch.softmax(first, -1)[:, answer[0]]
        first_rank = token_rank(first, answer[:1].expand(n_layers))
        target_value = float(tgt.value(logits[None], tf.targets, scored_mask(tf.answer_mask, prepared.n_context))[0])
    return ResidualContributions(
        item_id=prepared.item_id,
        split=prepared.split,
        target=tgt.name,
        components=tuple(names_out),
        layers=tuple(layers_out),
        values=values,
        readout_value=fr.value,
        target_value=target_value,
        lens_logprob=lens_lp,
        lens_first_prob=first_prob,
        lens_first_rank=first_rank,
    )
