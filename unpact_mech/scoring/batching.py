"""Padding and batch layout.

* Teacher forcing uses RIGHT padding: row ``b`` is ``prompt_b + answer_b + pads``. Real tokens never attend to
  the pads after them (causal), so no attention mask is needed and prompt positions are the same as unbatched.
* Generation uses LEFT padding with an attention mask; prompt position ``p`` of row ``b`` sits at batch position
  ``p + offset[b]``.

Interventions are built per batch from a :class:`BatchLayout`, so a recovery method can place them at each item's
keyword positions whatever the padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unpact_mech.models.hooks import Intervention, positions_to_mask


@dataclass(frozen=True)
class BatchLayout:
    """Which items a batch holds and where their prompt tokens sit.

    ``items``: indices into the caller's item list; ``offsets[b]``: batch position of prompt position 0;
    ``prompt_lens[b]``; ``width``: padded width (T0) of the batch's first forward; ``input_ids`` /
    ``attention_mask``: that forward's tokens (mask None for right-padded teacher forcing), so an intervention can
    run another model on the same batch (e.g. patching from the original model).
    """

    items: tuple[int, ...]
    offsets: tuple[int, ...]
    prompt_lens: tuple[int, ...]
    width: int
    input_ids: Tensor | None = field(default=None, compare=False, repr=False)
    attention_mask: Tensor | None = field(default=None, compare=False, repr=False)

    def mask(self, positions: Sequence[Sequence[int]]) -> Tensor:
        """Per-row prompt positions -> (B, width) bool mask in batch coordinates."""
        return positions_to_mask([[p + off for p in pos] for pos, off in zip(positions, self.offsets)], self.width)


#: Items per forward when a model is evaluated (greedy answers, teacher-forced scores, recovery conditions). Greedy
#: decoding of a small model on CPU is memory-bound, so a larger batch costs little more per step: the 174 built-in
#: facts took 88 s on SmolLM2 at 16 items per forward and 50 s at 64, with the same answers (2 cores).
EVAL_BATCH_SIZE = 64

#: Builds the interventions for one batch (``None`` = no interventions).
InterventionFactory = Callable[[BatchLayout], Sequence[Intervention]]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group indices into batches of similar length (sorted by length, stable) to minimise padding."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts for generation: ``input_ids``/``attention_mask`` (B, T0)."""

    input_ids: Tensor
    attention_mask: Tensor
    layout: BatchLayout


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, items: Sequence[int]) -> PromptBatch:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    offsets = []
    for row, p in enumerate(prompts):
        off = width - len(p)
        ids[row, off:] = torch.tensor(p, dtype=torch.long)
        mask[row, off:] = 1
        offsets.append(off)
    layout = BatchLayout(tuple(items), tuple(offsets), tuple(len(p) for p in prompts), width, ids, mask)
    return PromptBatch(ids, mask, layout)


@dataclass(frozen=True)
class TeacherForcedBatch:
    """Right-padded prompt+answer rows and the answer targets.

    Logits are needed only from position ``start = min(prompt_lens) - 1`` on: ``keep = L - start`` positions
    (``logits_to_keep``). ``targets[b, k]`` is the token at position ``start + k + 1``; ``answer_mask[b, k]``
    marks the answer targets of row ``b``; ``first[b]`` is the index k of row b's first answer target.
    """

    input_ids: Tensor
    targets: Tensor
    answer_mask: Tensor
    first: Tensor
    start: int
    keep: int
    layout: BatchLayout


def right_pad_teacher_forced(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int, items: Sequence[int]
) -> TeacherForcedBatch:
    rows = [list(p) + list(a) for p, a in zip(prompts, answers)]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    start = min(len(p) for p in prompts) - 1
    keep = length - start
    # targets[b, k] = ids[b, start + k + 1]; the last kept position has no target (masked).
    targets = torch.full((len(rows), keep), pad_id, dtype=torch.long)
    targets[:, : keep - 1] = ids[:, start + 1 :]
    answer_mask = torch.zeros((len(rows), keep), dtype=torch.bool)
    first = torch.zeros(len(rows), dtype=torch.long)
    for b, (p, a) in enumerate(zip(prompts, answers)):
        k0 = len(p) - 1 - start
        answer_mask[b, k0 : k0 + len(a)] = True
        first[b] = k0
    layout = BatchLayout(tuple(items), (0,) * len(rows), tuple(len(p) for p in prompts), length, ids)
    return TeacherForcedBatch(ids, targets, answer_mask, first, start, keep, layout)
