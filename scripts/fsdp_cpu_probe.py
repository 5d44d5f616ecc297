"""What FSDP needs from the toolkit: torch's FSDP2 on 2 CPU processes (gloo), the tiny model, ga_gdr for 3 steps.

    python -m torch.distributed.run --nproc_per_node 2 scripts/fsdp_cpu_probe.py

(accelerate's FSDP plugin cannot be used for this on CPU: ``Accelerator(cpu=True)`` ignores it and runs DDP.) Two runs,
each with ``fully_shard`` on every decoder layer and on ``model.hf`` before training, and an accelerator stand-in for
the loop (this process's rank, losses all-reduced, the gradient norm as a full tensor):

1. as the toolkit is: ``HookedLM`` keeps its views of the parameters ``fully_shard`` replaced, the loop trains those
   stale tensors and ends with ``UnlearningFailed: no weight changed``;
2. with ``HookedLM``'s views (``_params``, ``_state``) re-pointed at the sharded DTensor parameters: the final weights
   against ONE process at ``batch_size 2, grad_accum 2`` (the same rows, the same mean loss).

Prints one line per run on rank 0. The toolkit now does run 2 itself: ``unpact unlearn --fsdp`` /
``unlearn(..., fsdp=True)`` (unpact_mech/unlearning/fsdp.py, ``ShardedModel``; docs/unlearning.md, "FSDP"); this probe
keeps the manual steps, and why they are needed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from unpact_mech import load_items, load_model
from unpact_mech.distributed import local_accelerator
from unpact_mech.unlearning import UnlearningFailed, unlearn

RECIPE = dict(steps=3, lr=1e-3, batch_size=2, evaluate=False, progress=False)


class ShardedAccelerator:
    """The part of ``Accelerator`` the loop uses, for a model already sharded with ``fully_shard``."""

    def __init__(self) -> None:
        self.num_processes, self.process_index = dist.get_world_size(), dist.get_rank()
        self.is_main_process = self.process_index == 0

    def prepare(self, obj):
        return obj

    def no_sync(self, module):
        return contextlib.nullcontext()

    def reduce(self, tensor, reduction="mean"):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.num_processes

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def wait_for_everyone(self):
        dist.barrier()

    def free_memory(self):
        pass


def full(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def sharded_run(items, repoint: bool) -> tuple[str, dict[str, torch.Tensor] | None]:
    model = load_model("tiny")
    for layer in model.hf.model.layers:
        fully_shard(layer)
    fully_shard(model.hf)
    if repoint:  # what HookedLM would have to do after sharding (names without the TransformerLens bridge's part)
        name = lambda n: n.replace("._original_component", "")
        model._params.clear()
        model._params.update({name(n): p for n, p in model.hf.named_parameters()})
        model._state.clear()
        model._state.update({name(n): t for n, t in model.hf.state_dict(keep_vars=True).items()})
    try:
        unlearn(model, items, "ga_gdr", accelerator=ShardedAccelerator(), **RECIPE)
    except UnlearningFailed as err:
        return f"UnlearningFailed: {str(err)[:60]}...", None
    return "trained", {n: full(p).clone() for n, p in model.named_parameters()}


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    items = load_items("builtin:synthetic_facts")
    stale, _ = sharded_run(items, repoint=False)
    repointed, weights = sharded_run(items, repoint=True)
    if dist.get_rank() == 0:
        one = load_model("tiny")
        unlearn(one, items, "ga_gdr", grad_accum=2, accelerator=local_accelerator(), **RECIPE)  # this process alone
        print(f"HookedLM as it is (stale parameter views): {stale}")
        if weights is None:
            print(f"views re-pointed: {repointed}")
        else:
            ref = dict(one.named_parameters())
            diff = max(float((weights[n] - ref[n].detach()).abs().max()) for n in ref)
            print(f"views re-pointed: {repointed}; max |FSDP weight - one-process weight| = {diff:.2g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
