"""Forget/retain data for training and the per-step batches.

* :class:`UnlearningSet` — the forget and retain items with their training targets
  (:mod:`~unpact_mech.unlearning.targets`, built once from the base model).
* :func:`sample_indices` — an endless stream of shuffled epochs over a set, addressed by position, so the batch of
  step ``s`` is a pure function of ``(seed, s)``: a resumed run draws exactly the batches an uninterrupted one
  would, and on ``W`` processes rank ``r`` takes its own slice of every global batch.
* :func:`make_batch` — ONE right-padded teacher-forced batch holding the forget rows first, the retain rows after
  them and a method's extra rows last (e.g. ``keyguard``'s adversarial variants; one forward per micro-step;
  :func:`~unpact_mech.scoring.batching.right_pad_teacher_forced` does the padding and target alignment, as
  everywhere else).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.data.splits import FORGET, RETAIN, split_items
from unpact_mech.errors import InputError
from unpact_mech.scoring.batching import TeacherForcedBatch, right_pad_teacher_forced
from unpact_mech.scoring.tokens import encode_items
from unpact_mech.unlearning.targets import TrainTarget, build_targets

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM


@dataclass(frozen=True)
class UnlearningSet:
    """Forget and retain items with their training targets."""

    forget_items: tuple["QAItem", ...]
    retain_items: tuple["QAItem", ...]
    forget: tuple[TrainTarget, ...]
    retain: tuple[TrainTarget, ...]

    @staticmethod
    def split(items: Sequence["QAItem"], *, where: str = "data") -> tuple[list["QAItem"], list["QAItem"]]:
        """``(forget, retain)`` items by their ``split`` field.

        Utility and unsplit items are evaluated, never trained on.
        """
        forget, retain = split_items(items, FORGET), split_items(items, RETAIN)
        if not forget:
            splits = sorted({it.split for it in items})
            raise InputError(
                f'{where}: no forget items (items with "split": "forget"); splits present: {", ".join(splits)}'
            )
        return forget, retain

    @classmethod
    def from_items(
        cls,
        model: "HookedLM",
        items: Sequence["QAItem"],
        *,
        where: str = "data",
        target: str = "generated",
        with_retain: bool = True,
        batch_size: int = 16,
    ) -> "UnlearningSet":
        """Split ``items`` and build the training targets with the model's current (base) weights."""
        forget, retain = cls.split(items, where=where)
        retain = retain if with_retain else []

        def targets(part: list["QAItem"]) -> tuple[TrainTarget, ...]:
            return tuple(build_targets(model, part, encode_items(model, part), target=target, batch_size=batch_size))

        return cls(tuple(forget), tuple(retain), targets(forget), targets(retain))


def sample_indices(n: int, seed: int, stream: int, start: int, count: int) -> list[int]:
    """Positions ``start .. start+count-1`` of an endless sequence of shuffled epochs over ``range(n)``.

    Epoch ``e`` is ``randperm(n)`` drawn from a generator seeded with ``(seed, stream, e)`` — independent of any
    global RNG state, so the result depends only on the arguments.
    """
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        gen = torch.Generator().manual_seed(((seed * 1_000_003 + stream) * 1_000_033 + epoch) % (2**63))
        perm = torch.randperm(n, generator=gen).tolist()
        take = perm[offset : offset + count - len(out)]
        out.extend(take)
        pos += len(take)
    return out


@dataclass(frozen=True)
class StepBatch:
    """One micro-batch: rows ``[0, n_forget)`` are forget items, then ``n_retain`` retain items, then ``n_extra``
    extra rows a method asked for (:meth:`~unpact_mech.unlearning.methods.base.UnlearningMethod.extra_targets`).

    ``tf``: the right-padded teacher-forced batch (``input_ids`` (B, T), ``targets``/``answer_mask`` (B, K) over the
    ``keep`` last positions); ``region`` (B, T) marks each row's question, context and answer tokens — the positions RMU
    steers/anchors (the chat template and system prompt are shared by forget and retain rows, so they are never
    steered; BOS is never among them).
    """

    tf: TeacherForcedBatch
    n_forget: int
    forget_index: tuple[int, ...]
    retain_index: tuple[int, ...]
    region: Tensor
    extra: tuple[TrainTarget, ...] = ()

    @property
    def n_extra(self) -> int:
        return len(self.extra)

    @property
    def forget_rows(self) -> slice:
        return slice(0, self.n_forget)

    @property
    def retain_rows(self) -> slice:
        return slice(self.n_forget, self.n_forget + self.n_retain)

    @property
    def extra_rows(self) -> slice:
        return slice(self.n_forget + self.n_retain, self.n_forget + self.n_retain + self.n_extra)

    @property
    def n_retain(self) -> int:
        return len(self.retain_index)

    def to(self, device: torch.device) -> "StepBatch":
        tf = self.tf
        moved = TeacherForcedBatch(
            tf.input_ids.to(device),
            tf.targets.to(device),
            tf.answer_mask.to(device),
            tf.first.to(device),
            tf.start,
            tf.keep,
            tf.layout,
        )
        return StepBatch(moved, self.n_forget, self.forget_index, self.retain_index, self.region.to(device), self.extra)


def make_batch(
    data: UnlearningSet,
    forget_index: Sequence[int],
    retain_index: Sequence[int],
    pad_id: int,
    extra: Sequence[TrainTarget] = (),
) -> StepBatch:
    """Build the micro-batch for the given forget and retain item indices (forget rows first), ``extra`` rows last."""
    targets = [data.forget[i] for i in forget_index] + [data.retain[i] for i in retain_index] + list(extra)
    prefixes = [t.input_prefix for t in targets]
    tf = right_pad_teacher_forced(prefixes, [t.answer_ids for t in targets], pad_id, list(range(len(targets))))
    region = torch.zeros(tf.input_ids.shape, dtype=torch.bool)
    for row, t in enumerate(targets):
        region[row, t.prompt.question_positions] = True
        region[row, len(t.prompt) : len(prefixes[row]) + len(t.answer_ids)] = True
    return StepBatch(tf, len(forget_index), tuple(forget_index), tuple(retain_index), region, tuple(extra))
