"""Occlusion over a data set: the variants of many items in one batch, after one shared prompt prefix.

Every chat-format prompt begins with the same system prompt and template (24 of the 37 tokens of "What is the capital
of France?" on SmolLM2), and no occlusion variant changes them. :func:`occlusion_items`

1. packs each item's n+1 variants into one row with its tree attention mask (:func:`~.packing.pack_variants`);
2. computes the keys/values of the prefix that all rows share once (:func:`~.forward.shared_prefix`; its length is
   :func:`~.packing.prefix_free_length`: the items' common prompt prefix, never past a branch point);
3. runs the rows of several items as one right-padded batch after that cached prefix (:func:`~.packing.batch_packed`,
   at most ``max_tokens`` query tokens per forward), caching only the final normalised residual stream;
4. unembeds just each variant's answer-predicting positions (:meth:`HookedLM.unembed`) and scores them.

Scores equal :func:`~.occlusion.occlusion` item by item (tested to 1e-4). Items whose single-item batching would not
be ``packed`` (``batching="batched"``, or ``"auto"`` choosing ``batched``: :func:`~.occlusion.resolve_batching`), items
without units and items whose row is longer than :data:`~.occlusion.MAX_PACKED_TOKENS` go through
:func:`~.occlusion.occlusion` one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from unpact_mech.attribution.forward import shared_prefix
from unpact_mech.attribution.math import tree_attention_mask
from unpact_mech.attribution.occlusion import (
    MAX_PACKED_TOKENS,
    check_occlusion_options,
    occlusion,
    occlusion_result,
    resolve_baseline_token,
    resolve_batching,
)
from unpact_mech.attribution.packing import PackedVariants, batch_packed, pack_variants, prefix_free_length
from unpact_mech.attribution.results import TokenAttribution
from unpact_mech.attribution.targets import Target, scored_mask
from unpact_mech.attribution.units import ItemLike, PreparedItem, prepare_for, prompt_units

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

#: Query tokens (rows x padded length) per forward of :func:`occlusion_items`.
MAX_BATCH_TOKENS = 4096
#: Answer-predicting positions unembedded per call (bounds the (positions, d_vocab) logits in memory).
MAX_LOGIT_ROWS = 256
FINAL = "ln_final.hook_normalized"


def _chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Consecutive index groups whose ``len(group) * max(length)`` stays within ``max_tokens`` (one at least)."""
    groups: list[list[int]] = []
    for i, n in enumerate(lengths):
        if groups and (len(groups[-1]) + 1) * max(n, *(lengths[j] for j in groups[-1])) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _packed_values(
    model: "HookedLM",
    prepared: Sequence[PreparedItem],
    packs: Sequence[PackedVariants],
    target: Target,
    max_tokens: int,
) -> list[torch.Tensor]:
    """Target values (n_i + 1,) per item from its packed row, many rows per forward after one cached prefix."""
    L = prefix_free_length(packs, [p.prompt.ids for p in prepared])
    prefix = shared_prefix(model, packs[0].input_ids.tolist(), L)
    dtype = model.weights.W_E.dtype
    values: list[torch.Tensor] = [torch.zeros(0)] * len(packs)
    with torch.no_grad():
        for group in _chunks([len(p) - L for p in packs], max_tokens):
            batch = batch_packed([packs[i] for i in group], L, model.pad_token_id)
            kwargs = {} if prefix is None else {"past_key_values": prefix.cache_for(len(group)), "use_cache": True}
            mask = tree_attention_mask(batch.allowed, dtype)[0, 0].unsqueeze(1)  # (B, 1, Q, L + Q)
            out = model.forward(
                batch.input_ids,
                attention_mask=mask,
                position_ids=batch.position_ids,
                cache=[FINAL],
                logits_to_keep=1,
                query_offset=L,
                **kwargs,
            )
            final = out.cache[FINAL]
            # unembed only the answer-predicting positions, several items per call (<= MAX_LOGIT_ROWS positions)
            sizes = [p.numel() for p in batch.predictors]
            for sub in _chunks([1] * len(group), MAX_LOGIT_ROWS // max(sizes)):
                picked = torch.cat([final[b, batch.predictors[b]].flatten(0, 1) for b in sub])
                logits = model.unembed(picked).split([sizes[b] for b in sub])
                for b, rows in zip(sub, logits):
                    item = prepared[group[b]]
                    rows = rows.view(*batch.predictors[b].shape, -1)  # (R, A, V)
                    targets = torch.tensor(list(item.continuation)).expand(rows.shape[0], -1)
                    scored = scored_mask(torch.ones_like(targets, dtype=torch.bool), item.n_context)
                    values[group[b]] = target.value(rows, targets, scored).float()
    return values


def occlusion_items(
    model: "HookedLM",
    items: Sequence[ItemLike],
    *,
    level: str = "token",
    mode: str = "delete",
    baseline_token: int | str | None = None,
    target: str | Target = "answer",
    batching: str = "auto",
    batch_size: int = 64,
    max_tokens: int = MAX_BATCH_TOKENS,
) -> list[TokenAttribution]:
    """:func:`~.occlusion.occlusion` of every item (same options, same scores), the variants of many items per
    forward after one shared prefix (module docstring). ``max_tokens``: query tokens per forward."""
    check_occlusion_options(mode, batching)
    baseline_id = resolve_baseline_token(model, baseline_token) if mode == "replace" else None
    pairs = [prepare_for(model, item, target) for item in items]
    prepared = [p for p, _ in pairs]
    units = [prompt_units(p.prompt, level) for p in prepared]

    packs: dict[int, PackedVariants] = {}
    for i, (p, us) in enumerate(zip(prepared, units)):
        positions = [u.positions for u in us]
        if positions and resolve_batching(model, p.prompt_len, len(p.continuation), positions, mode, batching) == (
            "packed"
        ):
            pack = pack_variants(p.prompt.ids, p.continuation, positions, mode, baseline_id)
            if len(pack) <= MAX_PACKED_TOKENS:
                packs[i] = pack
    values: dict[int, torch.Tensor] = {}
    if packs:
        tgt = pairs[0][1]
        idx = list(packs)
        values = dict(
            zip(idx, _packed_values(model, [prepared[i] for i in idx], list(packs.values()), tgt, max_tokens))
        )
    return [
        occlusion_result(p, pairs[i][1].name, level, units[i], values[i])
        if i in values
        else occlusion(
            model,
            p,
            level=level,
            mode=mode,
            baseline_token=baseline_token,
            target=target,
            batching=batching,
            batch_size=batch_size,
        )
        for i, p in enumerate(prepared)
    ]
