"""Teacher-forced forwards of one item, shared by the attribution methods (model calls live here and in the
method modules; the math lives in :mod:`unpact_mech.attribution.math`).

* :func:`target_of_prompts` — the target for many prompt variants with the same answer: right-padded rows
  (:func:`~unpact_mech.scoring.batching.right_pad_teacher_forced`, no mask, logits only where needed), chunked.
* :func:`forward_embeddings` — the target (and cached activations) for rows of input embeddings, optionally
  after a :class:`SharedPrefix`: the tokens before the first position that differs between rows are run once
  and their keys/values reused by every row (exact; it is what the KV cache of generation does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.attribution.targets import Target, scored_mask
from unpact_mech.attribution.units import PreparedItem
from unpact_mech.scoring.batching import BatchLayout, InterventionFactory, TeacherForcedBatch, right_pad_teacher_forced
from unpact_mech.scoring.prompt_cache import supports_prompt_cache

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


def target_of_prompts(
    model: "HookedLM",
    prompts: Sequence[Sequence[int]],
    answer: Sequence[int],
    target: Target,
    *,
    batch_size: int = 64,
    interventions: InterventionFactory | None = None,
    n_context: int = 0,
) -> Tensor:
    """Target value (R,) of ``answer`` teacher-forced after each of ``prompts`` (R token-id lists).

    Rows are right-padded (real tokens never see the pads after them) in chunks of ``batch_size``; logits are
    computed only from the shortest prompt's last position on. ``interventions`` receives each chunk's
    :class:`~unpact_mech.scoring.batching.BatchLayout` (``items`` = row indices into ``prompts``).
    """
    values = torch.zeros(len(prompts))
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            idx = list(range(start, min(start + batch_size, len(prompts))))
            tf = right_pad_teacher_forced([prompts[i] for i in idx], [answer] * len(idx), model.pad_token_id, idx)
            ivs = interventions(tf.layout) if interventions else ()
            logits = model.forward(tf.input_ids, interventions=ivs, logits_to_keep=tf.keep).logits
            scored = scored_mask(tf.answer_mask, n_context)
            values[start : start + len(idx)] = target.value(logits, tf.targets, scored).float()
    return values


def single_row_batch(model: "HookedLM", prepared: PreparedItem) -> TeacherForcedBatch:
    """The item's teacher-forced row (1, N): targets and answer mask of the last ``keep`` positions."""
    return right_pad_teacher_forced([prepared.prompt.ids], [prepared.continuation], model.pad_token_id, [0])


def cached_row_forward(
    model: "HookedLM",
    prepared: PreparedItem,
    names: Sequence[str],
    interventions: InterventionFactory | None = None,
) -> tuple[TeacherForcedBatch, dict[str, Tensor], Tensor]:
    """One no-grad forward of the item's teacher-forced row caching ``names``: ``(batch, cache, logits)`` with the
    batch dimension dropped — cache ``name -> (T, ...)``, logits ``(K, V)`` over the kept (answer) positions."""
    tf = single_row_batch(model, prepared)
    with torch.no_grad():
        ivs = interventions(tf.layout) if interventions else ()
        out = model.forward(tf.input_ids, cache=list(names), interventions=ivs, logits_to_keep=tf.keep)
    return tf, {k: v[0] for k, v in out.cache.items()}, out.logits[0]


@dataclass(frozen=True)
class SharedPrefix:
    """Keys/values of the first ``length`` tokens of a sequence (each (1, H_kv, length, d_h), per layer)."""

    length: int
    layers: tuple[tuple[Tensor, Tensor], ...]

    def cache_for(self, batch: int):
        """A fresh HF cache holding this prefix for ``batch`` rows (the rows' forward appends to it)."""
        from transformers import DynamicCache

        return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.layers])


def shared_prefix(model: "HookedLM", ids: Sequence[int], length: int) -> SharedPrefix | None:
    """Run ``ids[:length]`` once (no grad) and keep its keys/values; None when ``length`` is 0. Not on a model with
    sliding-window attention, whose cache keeps only a window of the prefix (ValueError)."""
    if length <= 0:
        return None
    if not supports_prompt_cache(model):
        raise ValueError(f"{model.arch.family}: a sliding-window layer's cache does not keep the whole shared prefix")
    with torch.no_grad():
        out = model.forward(torch.tensor([list(ids[:length])]), use_cache=True, logits_to_keep=1)
    layers = tuple((k.detach(), v.detach()) for k, v, *_ in out.past_key_values)
    return SharedPrefix(length, layers)


def row_layout(prepared: PreparedItem, rows: int) -> BatchLayout:
    """Layout of ``rows`` copies of the item's input row (the sequence without its last token), for intervention
    factories."""
    ids = torch.tensor([prepared.sequence[:-1]]).expand(rows, -1)
    return BatchLayout((0,) * rows, (0,) * rows, (prepared.prompt_len,) * rows, ids.shape[1], ids)


def input_ids(prepared: PreparedItem) -> Tensor:
    """(1, N - 1): the teacher-forced sequence without its last token, which is never an input to a target logit
    (the logits at position ``N - 2`` predict it)."""
    return torch.tensor([prepared.sequence[:-1]])


def forward_embeddings(
    model: "HookedLM",
    prepared: PreparedItem,
    embeds: Tensor,
    target: Target,
    *,
    prefix: SharedPrefix | None = None,
    cache: Sequence[str] = (),
    interventions: InterventionFactory | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Target values (B,) and cached activations for rows of input embeddings of the item's sequence.

    ``embeds`` (B, N - 1 - prefix.length, d): embeddings of the input positions (:func:`input_ids`) after the
    shared prefix (all N - 1 without a prefix). Differentiable with respect to ``embeds`` and the cached
    activations. Interventions are built on :func:`row_layout` and need the full row (no prefix).
    """
    tf = single_row_batch(model, prepared)
    keep = tf.keep - 1  # the last kept position (the last answer token) has no target
    rows = embeds.shape[0]
    kwargs: dict = {}
    if prefix is not None:
        if interventions is not None:
            raise ValueError("interventions need the full sequence: run without a shared prefix")
        kwargs = {"past_key_values": prefix.cache_for(rows), "use_cache": True, "query_offset": prefix.length}
    ivs = interventions(row_layout(prepared, rows)) if interventions else ()
    out = model.forward(inputs_embeds=embeds, logits_to_keep=keep, cache=cache, interventions=ivs, **kwargs)
    scored = scored_mask(tf.answer_mask[:, :keep], prepared.n_context).expand(rows, -1)
    values = target.value(out.logits, tf.targets[:, :keep].expand(rows, -1), scored)
    return values, out.cache
