"""Several processes of one ``accelerate launch``: each evaluates its share of the items, every process gets all rows.

``unpact evaluate``, ``attribute`` and ``recover`` run unchanged on one process. Under
``accelerate launch --multi_gpu --num_processes N -m unpact_mech.cli COMMAND ...`` (gloo on a CPU-only machine;
``--config_file configs/accelerate/ddp.yaml`` says the same)
every process loads the model and the items, runs the SAME sequence of steps, and only the expensive per-item
evaluations are split: process ``r`` of ``N`` evaluates :func:`shard` ``(items, r, N)``, and :func:`gather_frames`
/ :func:`gather_lists` put the shares back together in the original item order on EVERY process. Everything
computed from all items afterwards (summaries, eligible items, controls, keywords, statistics) is then computed from
the same numbers on every process, as one process computes it; only the main process writes the output directory.

The split is STRIDED (process ``r`` takes items ``r, r + N, r + 2N, ...``), not contiguous: data files keep items
grouped (by split, by relation, by length), so contiguous blocks would give one process all the long prompts or all
the items of one kind, while a strided share has the same mix on every process (balanced work), and it is still
deterministic and trivially inverted (:func:`unshard`). More processes than items: the extra processes get nothing
to evaluate and only take part in the gather.

A share is evaluated in batches of its own, so a row's numbers can differ from a one-process run's in the last bits
of floating-point rounding when a batch's composition changes them (as a different ``--batch-size`` would). On the
tiny model ``evaluate`` and ``attribute`` write identical files; ``recover``'s answers, correctness, ranks and every
summary number are identical and its log-probs under interventions differ by up to ~3e-6
(``tests/unit/test_sharded_commands.py``).

:func:`local_accelerator` lets code that trains a private copy on every process (the relearning conditions of
``unpact recover``) train it exactly as one process would, without DDP across the launch.
:func:`check_training_launch` refuses, in one line, to train under a launch that shards parameters by accelerate's
FSDP plugin or DeepSpeed; ``unpact unlearn --fsdp`` shards the model itself (:mod:`unpact_mech.unlearning.fsdp`;
docs/unlearning.md, "FSDP").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.scoring.batching import InterventionFactory

T = TypeVar("T")
R = TypeVar("R")


# -- which process ------------------------------------------------------------------------------------------------
def launched_processes() -> int:
    """How many processes this launch has (``WORLD_SIZE``, set by ``accelerate launch`` / torchrun; 1 otherwise).
    Read from the environment, so a one-process run never initialises accelerate's process state."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_rank_and_count() -> tuple[int, int]:
    """``(rank, number of processes)``: ``(0, 1)`` on one process; under a multi-process launch from accelerate's
    ``PartialState``, which joins the process group (NCCL with GPUs; gloo on a CPU-only machine, where
    ``PartialState()`` without ``cpu=True`` would see one process of its own: ``DistributedType.NO``)."""
    if launched_processes() == 1:
        return 0, 1
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def is_main_process() -> bool:
    """True on one process and on rank 0 of a launch: the one process that writes outputs and prints summaries."""
    return process_rank_and_count()[0] == 0


# -- pure helpers ----------------------------------------------------------------------------------------------------
def _check(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"process {rank} of {world}: need 0 <= rank < world")


def shard_positions(n: int, rank: int, world: int) -> range:
    """Positions (in ``0..n-1``) of the items process ``rank`` of ``world`` evaluates: ``rank, rank + world, ...``."""
    _check(rank, world)
    return range(rank, n, world)


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Process ``rank``'s share of ``items`` (strided: ``items[rank::world]``; empty when ``rank >= len(items)``)."""
    return [items[i] for i in shard_positions(len(items), rank, world)]


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of :func:`shard`: ``parts[r]`` = the share of process ``r`` (in that order) -> the whole list in
    the original order. Raises ValueError when the parts' lengths are not those of a strided split."""
    world, n = len(parts), sum(len(p) for p in parts)
    for r, part in enumerate(parts):
        if len(part) != len(shard_positions(n, r, world)):
            raise ValueError(f"share {r} has {len(part)} entries; a strided split of {n} over {world} gives it "
                             f"{len(shard_positions(n, r, world))}")  # fmt: skip
    out: list[Any] = [None] * n
    for r, part in enumerate(parts):
        for pos, value in zip(shard_positions(n, r, world), part):
            out[pos] = value
    return out


def merge_frames(parts: Sequence[pd.DataFrame | None]) -> pd.DataFrame:
    """The inverse of :func:`shard` for per-item frames: ``parts[r]`` = process ``r``'s frame, ONE row per item of
    its share in share order (None or empty for an empty share) -> one frame, rows in the original item order, index
    ``0..n-1``. Columns in the order of the first non-empty share, then any the others add."""
    lengths = [0 if p is None else len(p) for p in parts]
    n = sum(lengths)
    unshard([range(k) for k in lengths])  # checks the lengths
    used = [(r, p) for r, p in enumerate(parts) if p is not None and len(p)]
    if not used:
        return next((p for p in parts if p is not None), pd.DataFrame()).reset_index(drop=True)
    frame = pd.concat([p for _, p in used], ignore_index=True)
    positions = [pos for r, _ in used for pos in shard_positions(n, r, len(parts))]
    order = sorted(range(n), key=positions.__getitem__)
    return frame.iloc[order].reset_index(drop=True)


# -- gathering (collective: every process must call it, in the same order) ----------------------------------------
def gather_lists(values: Sequence[T]) -> list[T]:
    """This process's per-item values (its :func:`shard`, in order) -> every process's, in the original order, on
    every process (``accelerate.utils.gather_object`` + :func:`unshard`). One process: ``list(values)``."""
    rank, world = process_rank_and_count()
    if world == 1:
        return list(values)
    from accelerate.utils import gather_object

    return unshard(gather_object([list(values)]))


def gather_frames(frame: pd.DataFrame | None) -> pd.DataFrame:
    """This process's per-item frame (one row per item of its :func:`shard`, in order; None for an empty share) ->
    the whole frame in the original item order, on every process (``accelerate.utils.gather_object`` +
    :func:`merge_frames`). One process: the frame itself."""
    rank, world = process_rank_and_count()
    if world == 1:
        return frame if frame is not None else pd.DataFrame()
    from accelerate.utils import gather_object

    return merge_frames(gather_object([frame]))


def map_items(fn: Callable[..., list[R]], items: Sequence[Any], *aligned: Sequence[Any]) -> list[R]:
    """``fn(items, *aligned)`` (a list with one value per item, in order) computed by each process on its share of
    ``items`` (and of the sequences ``aligned`` with them), gathered on every process. One process, or no items:
    ``fn(items, *aligned)`` itself."""
    rank, world = process_rank_and_count()
    if world == 1 or not items:
        return list(fn(items, *aligned))
    mine = shard(items, rank, world)
    values = list(fn(mine, *(shard(a, rank, world) for a in aligned))) if mine else []
    if len(values) != len(mine):
        raise ValueError(f"map_items: {len(values)} values for {len(mine)} items")
    return gather_lists(values)


def map_frame(fn: Callable[..., pd.DataFrame], items: Sequence[Any], *aligned: Sequence[Any]) -> pd.DataFrame:
    """:func:`map_items` for a function returning a frame with one row per item, in order."""
    rank, world = process_rank_and_count()
    if world == 1 or not items:
        return fn(items, *aligned)
    mine = shard(items, rank, world)
    frame = fn(mine, *(shard(a, rank, world) for a in aligned)) if mine else None
    if frame is not None and len(frame) != len(mine):
        raise ValueError(f"map_frame: {len(frame)} rows for {len(mine)} items")
    return gather_frames(frame)


def remap_interventions(
    factory: "InterventionFactory | None", positions: Sequence[int]
) -> "InterventionFactory | None":
    """An intervention factory built for a whole item list, for a call on a share of it: a batch's
    ``BatchLayout.items`` (indices into the share) are turned into indices into the whole list (``positions``)."""
    if factory is None:
        return None
    positions = list(positions)

    def on_share(layout):
        return factory(replace(layout, items=tuple(positions[i] for i in layout.items)))

    return on_share


def evaluate_items_sharded(model, items: Sequence[Any], *, encoded=None, interventions=None, **kwargs) -> pd.DataFrame:
    """:func:`~unpact_mech.scoring.evaluate.evaluate_items` with each process evaluating its share of ``items``
    (their ``encoded`` prompts, and ``interventions`` addressing the whole list, :func:`remap_interventions`);
    every process gets the whole frame. One process: ``evaluate_items`` itself."""
    from unpact_mech.scoring.evaluate import evaluate_items

    rank, world = process_rank_and_count()
    if world == 1 or not items:
        return evaluate_items(model, items, encoded=encoded, interventions=interventions, **kwargs)
    kwargs["progress"] = kwargs.get("progress", True) and rank == 0
    mine = shard(items, rank, world)
    frame = None
    if mine:
        frame = evaluate_items(
            model,
            mine,
            encoded=None if encoded is None else shard(list(encoded), rank, world),
            interventions=remap_interventions(interventions, shard_positions(len(items), rank, world)),
            **kwargs,
        )
    return gather_frames(frame)


# -- launches the toolkit cannot handle, and training a private copy on every process ----------------------------
class _LocalAccelerator:
    """The part of ``accelerate.Accelerator`` the training loop uses, for ONE process on its own: no wrapper, no
    gradient synchronisation, no collective (what ``Accelerator()`` is on a one-process run)."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def prepare(self, obj):
        return obj

    def no_sync(self, module):
        return contextlib.nullcontext()

    def reduce(self, tensor, reduction: str = "mean"):
        return tensor

    def backward(self, loss) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float, norm_type: float = 2):
        import torch

        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)

    def wait_for_everyone(self) -> None:
        pass

    def free_memory(self) -> None:
        pass


def local_accelerator():
    """None on one process (the loop makes its usual ``Accelerator``); under a multi-process launch an accelerator
    for this process alone, so a copy that every process trains the same way (e.g. a relearning condition) ends with
    the weights one process gives it, instead of a DDP (or FSDP) run over the launch with N times the batch."""
    sharding = _flag("ACCELERATE_USE_FSDP") or _flag("ACCELERATE_USE_DEEPSPEED")
    return _LocalAccelerator() if launched_processes() > 1 or sharding else None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


#: Why the toolkit does not train under accelerate's FSDP plugin (docs/unlearning.md, "FSDP"), in one line.
FSDP_REFUSAL = (
    "FSDP launches are not supported for training through accelerate's FSDP plugin (it replaces the parameters "
    "HookedLM views, and accelerate drops it on CPU); the toolkit shards the model itself with --fsdp "
    "(unlearn(..., fsdp=True)) under a plain launch: accelerate launch --config_file configs/accelerate/ddp.yaml "
    "-m unpact_mech.cli unlearn --fsdp ..."
)
DEEPSPEED_REFUSAL = (
    "DeepSpeed launches are not supported for training (ZeRO shards the parameters HookedLM views by name); use "
    "DDP: accelerate launch --config_file configs/accelerate/ddp.yaml -m unpact_mech.cli unlearn ... (or --fsdp "
    "to shard)"
)


def check_training_launch(accelerator: Any = None, *, fsdp: bool = False) -> None:
    """One-line :class:`InputError` before training under a launch whose sharding the toolkit does not do itself:
    accelerate's FSDP plugin (``ACCELERATE_USE_FSDP``, or ``accelerator.distributed_type`` FSDP; on a CPU-only
    machine accelerate 1.x ignores the plugin and would run plain DDP) unless the run shards with ``fsdp`` (the
    toolkit's own FSDP2, :mod:`unpact_mech.unlearning.fsdp`, which then ignores the plugin), or DeepSpeed
    (``ACCELERATE_USE_DEEPSPEED``). A :func:`local_accelerator` (a private copy trained on each process) is always
    fine."""
    if isinstance(accelerator, _LocalAccelerator):
        return
    kind = str(getattr(accelerator, "distributed_type", ""))
    if not fsdp and (_flag("ACCELERATE_USE_FSDP") or kind.endswith("FSDP")):
        raise InputError(FSDP_REFUSAL)
    if _flag("ACCELERATE_USE_DEEPSPEED") or kind.endswith("DEEPSPEED"):
        raise InputError(DEEPSPEED_REFUSAL)
