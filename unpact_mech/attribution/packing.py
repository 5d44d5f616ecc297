"""Occlusion variants as one packed sequence with a tree attention mask (pure layout, no model).

Variant ``v`` (the prompt with unit ``v`` deleted or replaced, followed by the answer) is identical to the
original sequence up to its first ablated position ``m_v``. The packed row holds the original sequence once
(the *trunk*) and, per variant, only its *branch* — its tokens from ``m_v`` on — with:

* position ids of the variant's own sequence (``m_v, m_v + 1, ...``), so RoPE / learned positions see exactly
  what a separate forward of the variant would;
* attention: a trunk token attends causally within the trunk; a branch token attends to trunk tokens
  ``0 .. m_v - 1`` (the shared prefix) and causally within its own branch — never to another branch.

Every branch position therefore computes the same function as the variant's own forward (up to float
summation order), and each shared prefix is computed once. Only the tokens that some answer logit depends on
are packed (the last answer token is never an input). See :func:`pack_variants`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unpact_mech.scoring.prompt_cache import shared_prefix_len

#: How a unit is removed: deleted (the paper; later tokens move up) or replaced by a baseline token.
OCCLUSION_MODES = ("delete", "replace")


def ablate(prompt: Sequence[int], positions: Sequence[int], mode: str, baseline_id: int | None = None) -> list[int]:
    """The prompt with ``positions`` deleted (``mode="delete"``) or set to ``baseline_id`` (``"replace"``)."""
    drop = set(positions)
    if mode == "delete":
        return [t for i, t in enumerate(prompt) if i not in drop]
    if mode == "replace":
        if baseline_id is None:
            raise ValueError("replace mode needs a baseline token id")
        return [baseline_id if i in drop else t for i, t in enumerate(prompt)]
    raise ValueError(f"unknown occlusion mode {mode!r} ({', '.join(OCCLUSION_MODES)})")


def variant_prompts(
    prompt: Sequence[int], units: Sequence[Sequence[int]], mode: str, baseline_id: int | None = None
) -> list[list[int]]:
    """``[prompt] + [prompt without unit u for u in units]`` — the n+1 occlusion variants."""
    return [list(prompt)] + [ablate(prompt, u, mode, baseline_id) for u in units]


@dataclass(frozen=True)
class PackedVariants:
    """One packed row. ``input_ids``, ``position_ids`` (P,); ``allowed`` (P, P) bool (query may attend key);
    ``predictors`` (R, A): packed index of the position whose logits predict answer token k of variant r
    (row 0 = the original)."""

    input_ids: Tensor
    position_ids: Tensor
    allowed: Tensor
    predictors: Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def pack_variants(
    prompt: Sequence[int],
    answer: Sequence[int],
    units: Sequence[Sequence[int]],
    mode: str,
    baseline_id: int | None = None,
) -> PackedVariants:
    """Pack the original sequence and one branch per unit (see the module docstring).

    ``prompt``, ``answer``: token ids; ``units``: the prompt positions of each unit (non-empty). The variants'
    answer-predicting positions are returned in ``predictors`` (row 0: the original, row u+1: unit u).
    """
    seq = list(prompt) + list(answer)
    n_in = len(seq) - 1  # the last answer token is never an input
    ids: list[int] = seq[:n_in]
    pos: list[int] = list(range(n_in))
    blocks: list[tuple[int, int, int]] = []  # (start in packed row, length, shared prefix length)
    predictors = [[len(prompt) - 1 + k for k in range(len(answer))]]
    for unit in units:
        m = min(unit)
        variant = ablate(prompt, unit, mode, baseline_id) + list(answer)
        branch = variant[m : len(variant) - 1]
        start = len(ids)
        ids += branch
        pos += list(range(m, m + len(branch)))
        blocks.append((start, len(branch), m))
        index = list(range(m)) + list(range(start, start + len(branch)))  # packed index of variant position i
        vlen = len(variant) - len(answer)
        predictors.append([index[vlen - 1 + k] for k in range(len(answer))])
    P = len(ids)
    allowed = torch.zeros(P, P, dtype=torch.bool)
    allowed[:n_in, :n_in] = torch.ones(n_in, n_in, dtype=torch.bool).tril()
    for start, length, m in blocks:
        allowed[start : start + length, :m] = True
        allowed[start : start + length, start : start + length] = torch.ones(length, length, dtype=torch.bool).tril()
    return PackedVariants(torch.tensor(ids), torch.tensor(pos), allowed, torch.tensor(predictors, dtype=torch.long))


def packed_length(prompt_len: int, answer_len: int, units: Sequence[Sequence[int]], mode: str) -> int:
    """Length of :func:`pack_variants`' row without building it."""
    n_in = prompt_len + answer_len - 1
    removed = (lambda u: len(u)) if mode == "delete" else (lambda u: 0)
    return n_in + sum(n_in - min(u) - removed(u) for u in units)


@dataclass(frozen=True)
class PackedBatch:
    """Several items' packed rows after a shared prefix of ``prefix_len`` tokens (held as a KV cache), right-padded
    to ``Q`` tokens: ``input_ids``, ``position_ids`` (B, Q); ``allowed`` (B, Q, prefix_len + Q) bool (query may
    attend key; keys are the prefix, then the row); ``predictors[b]`` (R_b, A_b): row-local answer-predicting
    indices of row ``b``'s variants (as :attr:`PackedVariants.predictors`, shifted by ``-prefix_len``)."""

    input_ids: Tensor
    position_ids: Tensor
    allowed: Tensor
    predictors: tuple[Tensor, ...]
    prefix_len: int


def prefix_free_length(packs: Sequence[PackedVariants], prompts: Sequence[Sequence[int]]) -> int:
    """Longest prefix that every packed row can take from one shared KV cache: the common prefix of ``prompts``,
    no longer than any row's first branch point or first answer-predicting position (those must be queries)."""
    common = shared_prefix_len(prompts)  # its cap, min(len) - 1, binds no tighter than the predictors below
    for pack in packs:
        branch_starts = pack.position_ids[1:] != pack.position_ids[:-1] + 1
        first_branch = int(pack.position_ids[1:][branch_starts].min()) if bool(branch_starts.any()) else common
        common = min(common, first_branch, int(pack.predictors.min()))
    return max(common, 0)


def batch_packed(packs: Sequence[PackedVariants], prefix_len: int, pad_id: int) -> PackedBatch:
    """Stack packed rows minus their first ``prefix_len`` tokens (identical in every row, see
    :func:`prefix_free_length`) into one right-padded batch. A pad query attends only to itself (no empty softmax
    row); no real query ever attends a pad."""
    L = prefix_len
    Q = max(len(p) - L for p in packs)
    B = len(packs)
    ids = torch.full((B, Q), pad_id, dtype=torch.long)
    pos = torch.zeros((B, Q), dtype=torch.long)
    allowed = torch.zeros((B, Q, L + Q), dtype=torch.bool)
    allowed[:, torch.arange(Q), L + torch.arange(Q)] = True
    for b, p in enumerate(packs):
        q = len(p) - L
        ids[b, :q] = p.input_ids[L:]
        pos[b, :q] = p.position_ids[L:]
        allowed[b, :q, : L + q] = p.allowed[L:, :]
    return PackedBatch(ids, pos, allowed, tuple(p.predictors - L for p in packs), L)
