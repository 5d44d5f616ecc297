"""Occlusion — the unPact score: ``C(u) = f(x) - f(x without u)`` for every question token or word ``u``.

``f`` is the target (default: the paper's LP, the teacher-forced mean log-prob of the gold answer, computed by
:mod:`unpact_mech.scoring.logprob`). ``x without u`` deletes the unit's tokens (``mode="delete"``, the paper's
definition; later tokens move up one position) or replaces each by a baseline token (``mode="replace"``,
positions unchanged). Only question tokens are units: BOS, chat-template and separator tokens are never ablated.
A word unit removes all its sub-word tokens together — not the sum of their token scores.

All n+1 variants (the intact prompt and one per unit) are scored in ONE forward, chunked only when large; the
``batching`` (one of :data:`BATCHINGS`) says how:

* ``batching="batched"``: the variants as right-padded rows of one batch;
* ``batching="packed"``: the variants packed into one sequence sharing their common prefixes through a tree
  attention mask (:mod:`unpact_mech.attribution.packing`) — fewer tokens, but one long attention row;
* ``batching="auto"`` (default): packed when its estimated FLOPs — which count the eager attention over the
  whole packed row — are below 80% of the batch's (:func:`choose_batching`). Measured on 2 CPU threads: on
  SmolLM2 (37-token chat prompts) packed is ~2x faster than batched and is chosen; on the tiny model packed is
  15-20% faster for the short synthetic prompts (chosen) but 2.3x slower for a 34-token prompt with 28 question
  tokens, where the quadratic packed row dominates (the estimate picks batched).

On a model with sliding-window attention (Mistral) only ``batched`` runs: the tree mask cannot express the window,
so ``auto`` resolves to ``batched`` and ``packed`` is an ``InputError``. Both give the same scores as a loop of
one forward per variant (tested to 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.attribution.forward import target_of_prompts
from unpact_mech.attribution.math import occlusion_scores, tree_attention_mask
from unpact_mech.attribution.packing import OCCLUSION_MODES, pack_variants, packed_length, variant_prompts
from unpact_mech.attribution.results import TokenAttribution
from unpact_mech.attribution.targets import Target, scored_mask
from unpact_mech.attribution.units import (
    ItemLike,
    PreparedItem,
    Unit,
    keyword_unit_mask,
    prepare_for,
    prompt_units,
)
from unpact_mech.errors import InputError
from unpact_mech.scoring.batching import InterventionFactory
from unpact_mech.scoring.prompt_cache import supports_prompt_cache

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

#: How the n+1 variants share a forward (module docstring).
BATCHINGS = ("auto", "batched", "packed")
#: Packed rows longer than this are split into several rows (each with its own trunk).
MAX_PACKED_TOKENS = 2048


def resolve_baseline_token(model: "HookedLM", baseline: int | str | None) -> int:
    """Baseline token id for ``mode="replace"``: an id, a text that is exactly one token, or None (pad token)."""
    if baseline is None:
        return model.pad_token_id
    if isinstance(baseline, int):
        if not 0 <= baseline < model.shape.d_vocab:
            raise InputError(f"baseline token id {baseline} is outside the vocabulary (0..{model.shape.d_vocab - 1})")
        return baseline
    ids = model.tokenizer(baseline, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(
            f"baseline token {baseline!r} is {len(ids)} tokens under this tokenizer; it must be exactly one"
        )
    return int(ids[0])


def check_occlusion_options(mode: str, batching: str) -> None:
    """Raise :class:`InputError` unless ``mode`` is in :data:`OCCLUSION_MODES` and ``batching`` in :data:`BATCHINGS`."""
    if mode not in OCCLUSION_MODES:
        raise InputError(f"unknown occlusion mode {mode!r}; choose one of: {', '.join(OCCLUSION_MODES)}")
    if batching not in BATCHINGS:
        raise InputError(f"unknown occlusion batching {batching!r}; choose one of: {', '.join(BATCHINGS)}")


def _token_flops(model: "HookedLM") -> tuple[float, float]:
    """(FLOPs per token of the blocks' matrices, FLOPs per query-key pair of eager attention)."""
    s = model.shape
    per_layer = s.d_model * s.n_heads * s.d_head * 2 + 2 * s.d_model * s.n_kv_heads * s.d_head + 3 * s.d_model * s.d_mlp
    return 2.0 * s.n_layers * per_layer, 4.0 * s.n_layers * s.n_heads * s.d_head


def choose_batching(
    model: "HookedLM", prompt_len: int, answer_len: int, units: Sequence[Sequence[int]], mode: str
) -> str:
    """``packed`` if its estimated FLOPs are < 80% of the right-padded batch's, else ``batched``.

    Estimate: ``tokens * F_token + query_key_pairs * F_pair`` with the eager attention's full (P x P) score
    matrix for the packed row and (n+1) x (T x T) for the batch (the margin covers the mask's overhead).
    """
    if not units:
        return "batched"
    per_token, per_pair = _token_flops(model)
    rows, length = len(units) + 1, prompt_len + answer_len
    batched = rows * length * per_token + rows * length * length * per_pair
    P = packed_length(prompt_len, answer_len, units, mode)
    packed = P * per_token + P * P * per_pair
    return "packed" if packed < 0.8 * batched else "batched"


def resolve_batching(
    model: "HookedLM",
    prompt_len: int,
    answer_len: int,
    units: Sequence[Sequence[int]],
    mode: str,
    batching: str,
    interventions: InterventionFactory | None = None,
) -> str:
    """``batching`` with ``auto`` resolved: ``batched`` under interventions or on a model with sliding-window attention
    (the tree mask of a packed row cannot express the window; ``packed`` is then an :class:`InputError`), else
    :func:`choose_batching`'s pick."""
    if not supports_prompt_cache(model):
        if batching == "packed":
            raise InputError(
                f"occlusion batching 'packed' cannot run {model.arch.family}'s sliding-window attention (the packed "
                "row's tree mask ignores the window); use 'batched' or 'auto'"
            )
        return "batched"
    if batching != "auto":
        return batching
    if interventions is not None:
        return "batched"
    return choose_batching(model, prompt_len, answer_len, units, mode)


def _packed_groups(
    prompt_len: int, answer_len: int, units: Sequence[Sequence[int]], mode: str, batch_size: int
) -> list[list[int]]:
    """Split unit indices into packed rows of at most ``batch_size`` branches and ``MAX_PACKED_TOKENS`` tokens."""
    groups: list[list[int]] = [[]]
    for i in range(len(units)):
        trial = groups[-1] + [i]
        too_long = packed_length(prompt_len, answer_len, [units[j] for j in trial], mode) > MAX_PACKED_TOKENS
        if groups[-1] and (len(trial) > batch_size or too_long):
            groups.append([i])
        else:
            groups[-1] = trial
    return groups


def target_of_variants_packed(
    model: "HookedLM",
    prompt: Sequence[int],
    answer: Sequence[int],
    units: Sequence[Sequence[int]],
    target: Target,
    *,
    mode: str,
    baseline_id: int | None = None,
    batch_size: int = 64,
    n_context: int = 0,
) -> Tensor:
    """Target values (n+1,) of the original and each unit's variant, from packed rows (tree attention mask);
    ``answer`` is the whole teacher-forced continuation, of which the first ``n_context`` tokens are not scored."""
    groups = _packed_groups(len(prompt), len(answer), units, mode, batch_size)
    values = torch.zeros(len(units) + 1)
    dtype = model.weights.W_E.dtype
    answer_t = torch.tensor(list(answer), dtype=torch.long)
    with torch.no_grad():
        for g, group in enumerate(groups):
            packed = pack_variants(prompt, answer, [units[i] for i in group], mode, baseline_id)
            # logits only at the answer-predicting positions: HF's ``logits_to_keep`` also takes an index tensor
            keep, inverse = torch.unique(packed.predictors.flatten(), return_inverse=True)
            logits = model.forward(
                packed.input_ids[None],
                attention_mask=tree_attention_mask(packed.allowed, dtype),
                position_ids=packed.position_ids[None],
                logits_to_keep=keep,
            ).logits[0]
            rows = logits[inverse].view(*packed.predictors.shape, -1)  # (R, A, V)
            targets = answer_t.expand(rows.shape[0], -1)
            scored = scored_mask(torch.ones_like(targets, dtype=torch.bool), n_context)
            v = target.value(rows, targets, scored).float()
            if g == 0:
                values[0] = v[0]
            values[torch.tensor(group) + 1] = v[1:]
    return values


def occlusion(
    model: "HookedLM",
    item: ItemLike,
    *,
    level: str = "token",
    mode: str = "delete",
    baseline_token: int | str | None = None,
    target: str | Target = "answer",
    batching: str = "auto",
    batch_size: int = 64,
    interventions: InterventionFactory | None = None,
) -> TokenAttribution:
    """unPact scores of the item's question units (see the module docstring).

    ``item``: a :class:`~unpact_mech.data.record.QAItem` or an :class:`~unpact_mech.scoring.tokens.EncodedQA`.
    ``baseline_token`` (``mode="replace"``): token id, one-token text, or None for the pad token.
    ``batch_size``: variants per forward (more are chunked). ``interventions``: a factory of interventions
    active in every variant's forward (``batched`` only; it receives the batch layout with row ``0`` = the
    intact prompt and row ``u + 1`` = unit ``u``).

    >>> res = occlusion(model, item, level="word")          # doctest: +SKIP
    >>> res.scores, res.to_frame()                          # doctest: +SKIP
    """
    prepared, tgt = prepare_for(model, item, target)
    check_occlusion_options(mode, batching)
    units = prompt_units(prepared.prompt, level)
    positions = [u.positions for u in units]
    baseline_id = resolve_baseline_token(model, baseline_token) if mode == "replace" else None
    prompt, answer = list(prepared.prompt.ids), list(prepared.continuation)
    batching = resolve_batching(model, len(prompt), len(answer), positions, mode, batching, interventions)
    if batching == "packed" and interventions is not None:
        raise ValueError("interventions need batching='batched' (packed rows have no per-variant layout)")
    if batching == "packed" and positions:
        values = target_of_variants_packed(
            model,
            prompt,
            answer,
            positions,
            tgt,
            mode=mode,
            baseline_id=baseline_id,
            batch_size=batch_size,
            n_context=prepared.n_context,
        )
    else:
        variants = variant_prompts(prompt, positions, mode, baseline_id)
        values = target_of_prompts(
            model,
            variants,
            answer,
            tgt,
            batch_size=batch_size,
            interventions=interventions,
            n_context=prepared.n_context,
        )
    return occlusion_result(prepared, tgt.name, level, units, values)


def occlusion_result(
    prepared: PreparedItem, target: str, level: str, units: Sequence[Unit], values: Tensor
) -> TokenAttribution:
    """The item's :class:`TokenAttribution` from the target values (n+1,) of its intact prompt and unit variants."""
    return TokenAttribution(
        item_id=prepared.item_id,
        split=prepared.split,
        method="occlusion",
        target=target,
        level=level,
        units=tuple(units),
        scores=occlusion_scores(values),
        target_value=float(values[0]),
        is_keyword=tuple(keyword_unit_mask(prepared, units)),
    )
