"""``--batch-size auto``: the largest inference batch that fits the model's device.

Only for batches that change speed, never numbers: evaluation, recovery and attribution forwards (items per
forward). Unlearning's batch is a training hyperparameter (it changes the gradient), so ``unpact unlearn`` keeps an
explicit ``--batch-size`` (with ``--grad-accum`` to fit memory).

* CUDA (and MPS): probed. :func:`largest_fitting` doubles the batch from 1 while a trial forward fits, then bisects
  between the last batch that fitted and the first that ran out of memory; the trial is the worst case the
  command will run: ``B`` rows of the longest prompt plus the answer cap, one forward with a KV cache and full
  logits (:func:`probe_forward`). Capped at :data:`DEVICE_CAP`.
* CPU: no out-of-memory error to catch (the process would be killed), and decoding a small model is compute-bound
  beyond a few dozen rows (the 174 built-in facts: 88 s at 16 rows per forward, 50 s at 64, the same answers), so
  the batch is the default :data:`~unpact_mech.scoring.batching.EVAL_BATCH_SIZE` unless half of the free memory
  holds fewer rows (:func:`memory_rule`, per-row bytes from :mod:`unpact_mech.models.memory`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

AUTO = "auto"
#: Largest batch the probe tries on an accelerator.
DEVICE_CAP = 1024


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator running out of memory (CUDA's ``OutOfMemoryError``, MPS's RuntimeError)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return (bool(oom) and isinstance(err, oom)) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def largest_fitting(try_batch: Callable[[int], None], cap: int = DEVICE_CAP) -> int:
    """The largest ``b <= cap`` for which ``try_batch(b)`` does not run out of memory: doubling from 1, then bisection
    between the last fit and the first failure (assumes fitting is monotone in ``b``). :class:`InputError` when not
    even one row fits; other exceptions propagate."""

    def fits(b: int) -> bool:
        try:
            try_batch(b)
            return True
        except Exception as err:  # only out-of-memory is an answer; anything else is re-raised
            if not is_out_of_memory(err):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return False

    good, bad, b = 0, None, 1
    while b <= cap:
        if not fits(b):
            bad = b
            break
        good, b = b, b * 2
    if good == 0:
        raise InputError("--batch-size auto: not even one sequence fits in the device's memory")
    if bad is None:  # every power of two up to the cap fitted: the cap itself, or bisect below it
        if good == cap or fits(cap):
            return cap
        bad = cap
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def memory_rule(per_row_bytes: int, free_bytes: int, cap: int) -> int:
    """``min(cap, floor(free / 2 / per_row))``, at least 1: the CPU rule (half the free memory for the batch)."""
    return max(1, min(cap, free_bytes // 2 // max(per_row_bytes, 1)))


def free_cpu_bytes() -> int:
    """Free physical memory of this machine (``sysconf``; 0 when the platform does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def row_bytes(model: "HookedLM", seq: int) -> int:
    """Inference bytes of one row of ``seq`` tokens: its KV cache, one layer's activations and full float32 logits
    (:mod:`unpact_mech.models.memory`)."""
    from unpact_mech.models.device import dtype_name
    from unpact_mech.models.memory import dims_from_config, kv_cache_bytes, layer_activation_bytes

    dims, dtype = dims_from_config(model.config), dtype_name(model.dtype)
    return kv_cache_bytes(dims, 1, seq, dtype) + seq * layer_activation_bytes(dims, seq, dtype) + 4 * dims.vocab * seq


@torch.no_grad()
def probe_forward(model: "HookedLM", batch: int, seq: int) -> None:
    """One forward of ``batch`` rows of ``seq`` tokens with a KV cache and full logits (the worst case of an
    evaluation batch)."""
    ids = torch.full((batch, seq), model.pad_token_id, dtype=torch.long, device=model.device)
    model.forward(ids, use_cache=True)


def resolve_for_items(model: "HookedLM", value: int | str, items, max_new_tokens: int, *, default: int) -> int:
    """:func:`resolve_batch_size` for evaluating ``items``: rows of the longest encoded prompt plus the answer cap."""
    if value != AUTO:
        return int(value)
    from unpact_mech.scoring.tokens import encode_items

    longest = max((len(e.prompt.ids) + len(e.answer_ids) for e in encode_items(model, items)), default=1)
    return resolve_batch_size(model, value, longest + max_new_tokens, default=default)


def resolve_batch_size(model: "HookedLM", value: int | str, seq: int, *, default: int) -> int:
    """``value`` itself when it is a number; for ``auto``, the probe on an accelerator and :func:`memory_rule`
    (capped at ``default``) on the CPU, for rows of ``seq`` tokens (the longest prompt plus the answer cap)."""
    if value != AUTO:
        return int(value)
    if model.device.type == "cpu":
        free = free_cpu_bytes()
        return memory_rule(row_bytes(model, seq), free, default) if free else default
    return largest_fitting(lambda b: probe_forward(model, b, seq), DEVICE_CAP)
