"""FSDP for unlearning: torch's FSDP2 (``fully_shard``) on the model's own HF module, for one training session.

``unpact unlearn --fsdp`` (``unlearn(..., fsdp=True)``, ``TrainConfig.fsdp``) under a launch of N >= 2 processes
(``accelerate launch --config_file configs/accelerate/ddp.yaml``, ``accelerate launch --multi_gpu``, ``torchrun``;
gloo on a CPU-only machine, NCCL with GPUs) shards parameters, gradients and AdamW state over the processes instead
of replicating them (DDP). The toolkit does the sharding itself, with torch's ``fully_shard``, not accelerate's FSDP
plugin (which accelerate 1.x silently drops on CPU, and which would replace the parameters ``HookedLM`` views).

:class:`ShardedModel` (entered by the training loop's session, after the base snapshot and the method's set-up —
the frozen reference of ga_klr / npo_klr / rmu / keyguard is an ordinary full copy — and before the trainable
parameters are chosen and AdamW is built):

1. ``fully_shard`` each decoder layer (``arch.layers``) and the root ``model.hf`` (one all-gather per layer in
   forward and backward, a reduce-scatter of the gradients, which FSDP averages over the processes as DDP does);
2. re-points ``HookedLM``'s views (``named_parameters``, ``state_dict``, ``weights``) at the new sharded DTensor
   parameters (:meth:`HookedLM._rebind_tensors`), so the loop trains what the forward uses and the old full tensors
   are freed. Forwards through both backends, hooks, caches and interventions work unchanged (they sit on the
   modules; FSDP's forward hooks all-gather the weights of a layer just before it runs);
3. :meth:`ShardedModel.gathered` (a collective: every process calls it): the whole model as plain full tensors for
   the duration of a ``with`` block on the processes that ask for them — FSDP's hooks are set aside there, so the
   main process evaluates, checkpoints and computes the task-vector view alone, with no collective, exactly as on
   one process; the other processes wait;
4. :meth:`ShardedModel.unshard` (a collective, on leaving the session): every process gathers the trained weights,
   the model's modules get plain parameters, classes and hooks back, and ``HookedLM`` is an ordinary model again
   (summary, saving by the main process, attribution and recovery read it as after any run).

:class:`FSDPAccelerator` is the part of ``accelerate.Accelerator`` the loop uses, for such a model: this process's
rank, losses all-reduced (mean), the gradient norm as a full tensor, ``no_sync`` by FSDP's
``set_requires_gradient_sync``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

#: Why ``--fsdp`` cannot run on one process.
ONE_PROCESS = (
    "--fsdp shards the model over the processes of a launch and needs at least 2: accelerate launch --config_file "
    "configs/accelerate/ddp.yaml -m unpact_mech.cli unlearn --fsdp ... (or torchrun --nproc_per_node N)"
)


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (a shard of a parameter under FSDP)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: Tensor) -> Tensor:
    """The whole tensor of a DTensor (a collective: every process must call it), a plain tensor itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def like(value: Tensor, target: Tensor) -> Tensor:
    """A full tensor laid out as ``target``: this process's shard of it when ``target`` is a DTensor (cut locally,
    no communication: every process holds the same full ``value``), else ``value`` itself."""
    if not is_sharded(target):
        return value
    from torch.distributed.tensor import distribute_tensor

    value = value.to(device=target.device, dtype=target.dtype)
    return distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)


class FSDPAccelerator:
    """What the training loop uses of ``accelerate.Accelerator``, for a model sharded by :class:`ShardedModel`
    (the process group is the launch's: :func:`fsdp_accelerator` joins it)."""

    distributed_type = "TORCH_FSDP2"

    def __init__(self) -> None:
        import torch.distributed as dist

        self.num_processes, self.process_index = dist.get_world_size(), dist.get_rank()
        self.is_main_process = self.process_index == 0

    def prepare(self, obj):
        return obj

    @contextlib.contextmanager
    def no_sync(self, module):
        """Accumulate this micro-batch's gradients unsharded, reduce-scatter them with the last one's."""
        sync = getattr(module, "set_requires_gradient_sync", None)
        if sync is None:
            yield
            return
        sync(False)
        try:
            yield
        finally:
            sync(True)

    def reduce(self, tensor: Tensor, reduction: str = "mean") -> Tensor:
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.num_processes if reduction == "mean" else tensor

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float, norm_type: float = 2) -> Tensor:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
        return full(norm)

    def wait_for_everyone(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """``value`` of the main process, on every process."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def free_memory(self) -> None:
        pass


def join_process_group() -> tuple[int, int]:
    """``(rank, number of processes)`` of this launch, joining its process group if nobody has (gloo for CPU
    tensors, NCCL for CUDA ones, each process on its GPU ``LOCAL_RANK``). Read from torch, not from accelerate's
    ``PartialState``, which on a CPU-only machine may already have settled on one process of its own. One line
    (:class:`InputError`) on one process."""
    import torch.distributed as dist

    from unpact_mech.distributed import launched_processes

    if launched_processes() < 2:
        raise InputError(ONE_PROCESS)
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def fsdp_accelerator() -> FSDPAccelerator:
    """The accelerator of an FSDP run, in the launch's process group (:func:`join_process_group`)."""
    join_process_group()
    return FSDPAccelerator()


def local_device(model: "HookedLM") -> torch.device:
    """The device this process trains on: its own GPU (``PartialState`` set it current) for a model on CUDA."""
    if model.device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return model.device


# -- what fully_shard adds to a module, so that it can be set aside and undone -------------------------------------
def _hook_dicts(module: nn.Module) -> dict[str, dict]:
    return {k: v for k, v in vars(module).items() if "hook" in k and isinstance(v, dict)}


@dataclass
class _Added:
    """What ``fully_shard`` changed on one module: its class before, the attributes and hooks it added."""

    cls: type
    attrs: list[str]
    hooks: dict[str, list[int]]


class ShardedModel:
    """``model.hf`` sharded with FSDP2 and ``model``'s views re-pointed (see the module docstring). Every method
    marked collective must be called by every process, in the same order."""

    def __init__(self, model: "HookedLM", mesh=None) -> None:
        from torch.distributed.fsdp import fully_shard

        from unpact_mech.models.arch import walk

        self.model = model
        hf = model.hf
        modules = list(hf.modules())
        before = {id(m): (type(m), set(vars(m)), {k: set(d) for k, d in _hook_dicts(m).items()}) for m in modules}
        old = dict(hf.named_parameters(remove_duplicate=False))
        if mesh is None:
            import torch.distributed as dist
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(model.device.type, (dist.get_world_size(),))
        for layer in walk(hf, model.arch.layers):
            fully_shard(layer, mesh=mesh)
        fully_shard(hf, mesh=mesh)
        new = dict(hf.named_parameters(remove_duplicate=False))
        #: old full parameter (by id) -> its sharded replacement
        replacement = {id(old[name]): new[name] for name in old}
        self.added: dict[nn.Module, _Added] = {}
        for m in modules:
            cls, attrs, hooks = before[id(m)]
            self.added[m] = _Added(
                cls,
                [k for k in vars(m) if k not in attrs],
                {k: [h for h in d if h not in hooks.get(k, ())] for k, d in _hook_dicts(m).items()},
            )
        #: (module, name, sharded parameter) for every parameter slot of the model (tied weights: two slots)
        self.slots = [(m, name, p) for m in modules for name, p in vars(m)["_parameters"].items() if is_sharded(p)]
        #: the distinct sharded parameters, in one order on every process (the order of the collectives)
        self.params: list[nn.Parameter] = list({id(p): p for _, _, p in self.slots}.values())
        del old, new
        model._rebind_tensors(replacement)
        self._saved_hooks: dict[tuple[int, str], dict] = {}

    # -- full tensors ------------------------------------------------------------------------------------------------
    def _gather(self, keep: bool) -> dict[int, nn.Parameter]:
        """Collective: every sharded parameter as a full plain one (by the sharded one's id); kept only if ``keep``."""
        out: dict[int, nn.Parameter] = {}
        for p in self.params:
            whole = p.detach().full_tensor()
            if keep:
                out[id(p)] = nn.Parameter(whole, requires_grad=p.requires_grad)
        return out

    def _reshard(self) -> None:
        from torch.distributed.fsdp import FSDPModule

        for m in self.added:
            if isinstance(m, FSDPModule):
                m.reshard()  # registers the sharded parameters (no communication)

    def _to_plain(self, plain: Mapping[int, nn.Parameter], *, forever: bool = False) -> None:
        """Put ``plain`` parameters in every slot, set FSDP's hooks aside, and point ``model``'s views at them."""
        self._reshard()
        for m, name, p in self.slots:
            vars(m)["_parameters"][name] = plain[id(p)]
        for m, added in self.added.items():
            dicts = _hook_dicts(m)
            for key, ids in added.hooks.items():
                if ids and key in dicts:
                    if not forever:
                        self._saved_hooks[(id(m), key)] = dict(dicts[key])
                    for h in ids:
                        dicts[key].pop(h, None)
        self.model._rebind_tensors({id(p): plain[id(p)] for p in self.params})

    def _to_sharded(self, plain: Mapping[int, nn.Parameter]) -> None:
        for m, name, p in self.slots:
            vars(m)["_parameters"][name] = p
        for m, added in self.added.items():
            dicts = _hook_dicts(m)
            for key, ids in added.hooks.items():
                saved = self._saved_hooks.pop((id(m), key), None)
                if saved is None or key not in dicts:
                    continue
                now = dicts[key]  # FSDP's entries back in their places (its pre-forward hook runs first)
                merged = {h: fn for h, fn in saved.items() if h in ids or h in now}
                merged |= {h: fn for h, fn in now.items() if h not in merged}
                now.clear()
                now.update(merged)
        self.model._rebind_tensors({id(plain[id(p)]): p for p in self.params})

    @contextlib.contextmanager
    def gathered(self, keep: bool) -> Iterator[bool]:
        """Collective. Inside the block, on a process with ``keep``: the model holds plain full copies of the
        current weights and runs without FSDP (no collective: it may run forwards alone); changes to those copies
        are DISCARDED on exit. Processes without ``keep`` take part in the gathering only. Yields ``keep``."""
        plain = self._gather(keep)
        if not keep:
            yield False
            return
        self._to_plain(plain)
        try:
            yield True
        finally:
            self._to_sharded(plain)

    def state(self, names: Sequence[str]) -> dict[str, Tensor]:
        """Collective: full copies of the named tensors (``model.state_dict()`` names), on every process."""
        state = self.model.state_dict()
        return {n: full(state[n]).clone() for n in names}

    @torch.no_grad()
    def load(self, state: Mapping[str, Tensor]) -> None:
        """Copy full tensors (the same on every process, e.g. read from a checkpoint) into the sharded model."""
        own = self.model.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"unknown parameter names: {unknown[:5]}")
        for name, value in state.items():
            own[name].copy_(like(value, own[name]))

    # -- optimizer state ---------------------------------------------------------------------------------------------
    @staticmethod
    def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Collective: ``optimizer.state_dict()`` with every sharded state tensor (AdamW's moments) made whole."""
        sd = optimizer.state_dict()
        state = {k: {n: full(v) for n, v in sorted(s.items())} for k, s in sorted(sd["state"].items())}
        return {**sd, "state": state}

    @staticmethod
    def sharded_optimizer_state(sd: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The inverse of :meth:`full_optimizer_state` for ``optimizer``'s parameters (cut locally)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {}
        for k, s in sd["state"].items():
            p = params[int(k)]
            state[k] = {n: like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for n, v in s.items()}
        return {**sd, "state": state}

    # -- the end -----------------------------------------------------------------------------------------------------
    def unshard(self) -> None:
        """Collective: the model becomes an ordinary one again, with the current weights on every process."""
        from torch.distributed import _composable_state

        plain = self._gather(True)
        self._to_plain(plain, forever=True)
        mapping = getattr(_composable_state, "_module_state_mapping", {})
        for m, added in self.added.items():
            for key in added.attrs:
                vars(m).pop(key, None)
            m.__class__ = added.cls
            mapping.pop(m, None)
        self.slots, self.params, self.added = [], [], {}
