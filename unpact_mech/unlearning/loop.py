"""The ONE training loop for every gradient method, written with ``accelerate``.

The same code runs on one CPU process and under ``accelerate launch`` (DDP over N processes). It trains the
parameters of the SAME module the backends wrap (``model.hf``, no copy); accelerate's ``prepare`` returns that
module itself on one process and a ``DistributedDataParallel`` wrapper around it on several. DDP synchronises
gradients only for forwards that pass through the wrapper's own ``forward``, while the backend calls ``model.hf``;
so the loss forward runs inside
:meth:`HookedLM.forward_through(prepared) <unpact_mech.models.hooked.HookedLM.forward_through>`, which makes the
backend call the wrapper (hooks and caches are unchanged: they sit on ``hf``'s submodules).

One optimizer step (``step`` counts these):

1. for each of ``grad_accum`` micro-batches — ``batch_size`` forget rows (+ ``batch_size`` retain rows if the method
   has a retain term), a pure function of ``(seed, step, micro-batch, rank)`` — run ONE policy forward
   (``logits_to_keep`` = the answer span; cached hooks if the method asks), the method's loss, a finiteness check
   (reduced over processes, before ``backward``), ``backward(loss / grad_accum)`` (DDP's all-reduce on the last
   micro-batch only: ``no_sync`` before);
   then, for each of the method's :meth:`~unpact_mech.unlearning.methods.base.UnlearningMethod.extra_passes`
   (none for every method but ``keyguard``'s noise / quantization terms), one more forward + backward of the same
   micro-batch with trained weights temporarily replaced (:func:`temporary_weights`, restored bit-exactly; DDP
   all-reduces on the step's very last backward only);
2. clip the gradient norm (``max_grad_norm``; the norm is checked finite), AdamW step, lr schedule step.

Evaluations (step 0, every ``eval_every`` steps, the end) and checkpoints (every ``checkpoint_every`` steps) run
on the main process. Guards: a non-finite loss or gradient norm raises :class:`UnlearningFailed` before any
update with it (the last checkpoint stays the last good state); so does a run in which no weight changed.
Training runs in eval mode (no dropout): deterministic by seed, and the model attribution sees. A model in a half
precision trains through float32 master weights with float32 AdamW state
(:mod:`~unpact_mech.unlearning.precision`). With ``gradient_checkpointing`` the decoder layers recompute their
activations in the backward of each step
(:mod:`~unpact_mech.unlearning.grad_checkpointing`: how it is switched on in eval mode, and which interventions it
refuses). With ``fsdp`` (under a launch of N >= 2 processes) the session shards ``model.hf`` with torch's FSDP2
instead of wrapping it in DDP, and gives it back whole at the end (:mod:`~unpact_mech.unlearning.fsdp`): the same
batches and the same mean loss as DDP, so the weights of DDP / one process with ``grad_accum`` N to rounding;
evaluations and checkpoints gather the full weights on every process and run on the main one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unpact_mech.distributed import check_training_launch
from unpact_mech.errors import InputError
from unpact_mech.unlearning import params as P
from unpact_mech.unlearning.batches import UnlearningSet, make_batch, sample_indices
from unpact_mech.unlearning.checkpoint import CheckpointStore
from unpact_mech.unlearning.fsdp import FSDPAccelerator, ShardedModel, fsdp_accelerator, local_device
from unpact_mech.unlearning.grad_checkpointing import GradientCheckpointing, check_interventions, maybe_checkpointing
from unpact_mech.unlearning.methods.base import LossTerms, PolicyOutput, UnlearningMethod, WeightPass
from unpact_mech.unlearning.precision import MasterWeights
from unpact_mech.utils import progress_bar

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

LR_SCHEDULES = ("constant", "linear", "cosine")
#: An evaluation at a step: returns (summary row, long per-item rows).
Evaluate = Callable[[int], "tuple[dict[str, Any], list[dict[str, Any]]]"]


class UnlearningFailed(RuntimeError):
    """Training could not produce an unlearned model (non-finite loss, no weight changed): exit 1, nothing saved."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (validated on construction: bad values raise :class:`InputError`)."""

    steps: int
    lr: float
    batch_size: int = 4
    grad_accum: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    stop_when_forget_below: float | None = None
    max_utility_drop: float | None = None
    #: Recompute each decoder layer's activations in the backward instead of storing them (HF activation
    #: checkpointing, ``use_reentrant=False``): less memory, about one more forward per step, the same weights.
    gradient_checkpointing: bool = False
    #: Shard parameters, gradients and AdamW state over the processes of the launch (torch FSDP2) instead of DDP.
    fsdp: bool = False

    def __post_init__(self) -> None:
        def bad(flag: str, why: str, value: Any) -> InputError:
            return InputError(f"{flag} {why}, got {value}")

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise bad("--steps", "must be an integer >= 1", self.steps)
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise bad("--lr", "must be a finite number > 0", self.lr)
        for flag, value in (("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum)):
            if value < 1:
                raise bad(flag, "must be >= 1", value)
        for flag, value in (
            ("--warmup-steps", self.warmup_steps),
            ("--eval-every", self.eval_every),
            ("--checkpoint-every", self.checkpoint_every),
        ):
            if value < 0:
                raise bad(flag, "must be >= 0", value)
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"--lr-schedule {self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm < 0:
            raise bad("--max-grad-norm", "must be >= 0 (0 = no clipping)", self.max_grad_norm)
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise bad("--weight-decay", "must be >= 0", self.weight_decay)
        for flag, value in (
            ("--stop-when-forget-below", self.stop_when_forget_below),
            ("--max-utility-drop", self.max_utility_drop),
        ):
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise bad(flag, "must be an accuracy in [0, 1]", value)
        if not isinstance(self.gradient_checkpointing, bool):
            raise bad("--gradient-checkpointing", "must be True or False", self.gradient_checkpointing)
        if not isinstance(self.fsdp, bool):
            raise bad("--fsdp", "must be True or False", self.fsdp)
        if self.stop_rule is not None and self.eval_every not in (0, 1):
            raise bad("--eval-every", "must be 1 with a stop rule (it evaluates after every step)", self.eval_every)

    @property
    def stop_rule(self) -> "StopRule | None":
        """The stop rule, if either limit is set."""
        if self.stop_when_forget_below is None and self.max_utility_drop is None:
            return None
        return StopRule(self.stop_when_forget_below, self.max_utility_drop)

    @property
    def evaluation_interval(self) -> int:
        """Evaluate every this many steps (0 = only at the start and the end); 1 whenever a stop rule is set."""
        return 1 if self.stop_rule is not None else self.eval_every


@dataclass(frozen=True)
class StopRule:
    """When to stop before the last step, judged on the evaluation after every step (accuracies of the ``forget``
    and ``utility`` items, greedy + contains judge):

    * ``forget_below``: stop at the FIRST step whose forget accuracy is <= this (the target is met);
    * ``max_utility_drop``: stop BEFORE the first step whose utility accuracy is more than this below step 0's — that
      step's update is undone (the weights of the step before are kept, and its evaluation is recorded apart).
    """

    forget_below: float | None = None
    max_utility_drop: float | None = None

    def check(self, first: dict[str, Any], row: dict[str, Any]) -> tuple[str, bool] | None:
        """``(reason, undo_this_step)`` if training must stop after the step evaluated in ``row``, else None."""
        if self.max_utility_drop is not None:
            drop = first["utility_accuracy"] - row["utility_accuracy"]
            if drop > self.max_utility_drop + 1e-12:
                return (
                    f"utility accuracy fell by {drop:.3f} (> {self.max_utility_drop:g}) at step {row['step']}: "
                    f"kept step {row['step'] - 1}",
                    True,
                )
        if self.forget_below is not None and row["forget_accuracy"] <= self.forget_below + 1e-12:
            return f"forget accuracy {row['forget_accuracy']:.3f} <= {self.forget_below:g} at step {row['step']}", False
        return None


def rule_not_met(rule: StopRule, dynamics: Sequence[dict[str, Any]], steps: int) -> str | None:
    """Why a forget target was not reached within ``steps`` (None when the rule has no forget target)."""
    if rule.forget_below is None:
        return None
    last = dynamics[-1]["forget_accuracy"] if dynamics else float("nan")
    return (
        f"forget accuracy {last:.3f} after all {steps} steps is above the target {rule.forget_below:g}: give more "
        "--steps or a larger --lr"
    )


def lr_factor(step: int, *, steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based).

    Warm-up: ``(step+1)/(warmup+1)`` for ``step < warmup`` (never 0, unlike HF's, which wastes a step). Then
    ``constant``: 1; ``linear``: ``(steps − step)/(steps − warmup)``;
    ``cosine``: ``½(1 + cos(π·(step − warmup)/(steps − warmup)))``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant" or steps <= warmup:
        return 1.0
    progress = (step - warmup) / (steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What a run produced. ``dynamics``: one row per evaluation; ``item_rows``: long per-item rows of all
    evaluations; ``loss_log``: one row per optimizer step; ``base``: the trainable weights before training."""

    steps: int
    loss_log: list[dict[str, Any]]
    dynamics: list[dict[str, Any]]
    item_rows: list[dict[str, Any]]
    base: dict[str, Tensor] = field(repr=False)
    trainable: list[str] = field(repr=False)
    changed: list[str] = field(repr=False)
    resumed_from: int | None = None
    train_seconds: float = 0.0
    steps_run: int = 0
    stop_reason: str | None = None
    rejected: list[dict[str, Any]] = field(default_factory=list)


def policy_forward(model: "HookedLM", method: UnlearningMethod, batch, *, checkpointing: bool = False) -> PolicyOutput:
    """The micro-step's single forward: logits over the answer span (if needed) and the method's hooks, with grad,
    under the method's interventions for this batch (none for every method but ``keyguard``). ``checkpointing``:
    the layers recompute their activations in the backward, so interventions inside a layer are refused
    (:func:`~unpact_mech.unlearning.grad_checkpointing.check_interventions`)."""
    interventions = method.interventions(model, batch)
    if checkpointing:
        check_interventions(interventions, model.shape.n_layers)
    out = model.forward(
        batch.tf.input_ids,
        cache=method.cache_hooks(model),
        interventions=interventions,
        logits_to_keep=batch.tf.keep if method.needs_logits else 1,
    )
    return PolicyOutput(batch, out.logits if method.needs_logits else None, out.cache)


@contextlib.contextmanager
def temporary_weights(named: Sequence[tuple[str, torch.nn.Parameter]], weight: Callable[[str, Tensor], Tensor | None]):
    """Inside the block every parameter ``p`` (named ``name``) for which ``weight(name, p)`` gives a tensor holds that
    value (copied in place, without grad: hooks, DDP and the optimizer keep seeing the same tensor); on exit each is
    restored from a copy, bit-exactly, whatever happened inside. Gradients accumulated inside stay on ``p.grad``."""
    saved: list[tuple[torch.nn.Parameter, Tensor]] = []
    try:
        with torch.no_grad():
            for name, p in named:
                value = weight(name, p.detach())
                if value is None:
                    continue
                if value.shape != p.shape:
                    raise ValueError(f"temporary weight of {name}: shape {tuple(value.shape)}, not {tuple(p.shape)}")
                saved.append((p, p.detach().clone()))
                p.copy_(value)
        yield
    finally:
        with torch.no_grad():
            for p, clean in saved:
                p.copy_(clean)


def make_accelerator(model: "HookedLM"):
    """An ``Accelerator`` on the model's device type (the foundation loads models on the CPU)."""
    from accelerate import Accelerator

    return Accelerator(cpu=model.device.type == "cpu")


@dataclass
class TrainingSession:
    """The prepared training objects of a :meth:`Trainer.session`: the (possibly DDP-wrapped) module, the AdamW
    optimizer over the trainable parameters and its lr schedule; ``checkpointing`` when the run recomputes
    activations (``TrainConfig.gradient_checkpointing``)."""

    prepared: Any
    optimizer: Any
    scheduler: Any
    params: list[torch.nn.Parameter]
    checkpointing: GradientCheckpointing | None = None
    #: float32 copies the optimizer steps when the model is in a half precision (None for a float32 model).
    masters: MasterWeights | None = None

    @property
    def optimized(self) -> list[Tensor]:
        """The tensors AdamW updates and clipping sees: the float32 masters, or the parameters themselves."""
        return self.masters.masters if self.masters is not None else list(self.params)


class Trainer:
    """One training run. :func:`train` is the usual entry point; :meth:`session` + :meth:`step` expose single
    optimizer steps (benchmarks, custom loops)."""

    def __init__(
        self,
        model: "HookedLM",
        method: UnlearningMethod,
        data: UnlearningSet,
        config: TrainConfig,
        *,
        trainable: Sequence[str],
        store: CheckpointStore | None = None,
        evaluate: Evaluate | None = None,
        accelerator=None,
        progress: bool = True,
        callback: Callable[[int], None] | None = None,
    ) -> None:
        self.model, self.method, self.data, self.cfg = model, method, data, config
        self.trainable = list(trainable)
        self.store, self.evaluate, self.progress, self.callback = store, evaluate, progress, callback
        # accelerate's FSDP plugin / DeepSpeed: one line, before anything is built
        check_training_launch(accelerator, fsdp=config.fsdp)
        self.owns_accelerator = accelerator is None
        #: the model sharded by FSDP, while a session of an ``fsdp`` run is open
        self.sharding: ShardedModel | None = None
        if config.fsdp:
            if accelerator is not None and not isinstance(accelerator, FSDPAccelerator):
                raise InputError("fsdp=True makes its own accelerator: pass accelerator=None")
            self.acc = accelerator if accelerator is not None else fsdp_accelerator()
            model.hf.to(local_device(model))  # this process's GPU, before the method's reference copy follows it
        else:
            self.acc = accelerator if accelerator is not None else make_accelerator(model)
        check_training_launch(self.acc, fsdp=config.fsdp)
        self.loss_log: list[dict[str, Any]] = []
        self.dynamics: list[dict[str, Any]] = []
        self.item_rows: list[dict[str, Any]] = []
        self.base: dict[str, Tensor] = {}
        self.resumed_store = False
        self.stop_reason: str | None = None
        self.rejected: list[dict[str, Any]] = []

    # -- batches ----------------------------------------------------------------------------------------------------
    def batch(self, step: int, micro: int):
        """Micro-batch ``micro`` of optimizer step ``step`` on this process (a pure function of seed and position)."""
        cfg, acc = self.cfg, self.acc
        nf = min(cfg.batch_size, len(self.data.forget))
        nr = min(cfg.batch_size, len(self.data.retain)) if self.method.needs_retain else 0
        slot = (step * cfg.grad_accum + micro) * acc.num_processes + acc.process_index
        f_idx = sample_indices(len(self.data.forget), cfg.seed, 0, slot * nf, nf)
        r_idx = sample_indices(len(self.data.retain), cfg.seed, 1, slot * nr, nr) if nr else []
        extra = self.method.extra_targets(cfg.seed, slot, cfg.batch_size)
        return make_batch(self.data, f_idx, r_idx, self.model.pad_token_id, extra).to(self.model.device)

    # -- evaluation (main process) ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def unlearned_view(self):
        """The model's weights as the unlearned model has them (task vectors: θ − s·τ for the current θ_t)."""
        if not self.method.transforms_weights:
            yield
            return
        trained = P.snapshot(self.model, self.trainable)
        self.model.load_state_dict(self.method.unlearned_weights(self.base, trained))
        try:
            yield
        finally:
            self.model.load_state_dict(trained)

    def stop_check(self, rule: StopRule) -> tuple[str, bool] | None:
        """The stop rule on the latest evaluation (decided on the main process, shared with every process)."""
        decision = None
        if self.acc.is_main_process and self.dynamics:
            decision = rule.check(self.dynamics[0], self.dynamics[-1])
        if isinstance(self.acc, FSDPAccelerator):
            decision = self.acc.broadcast(decision)
        elif self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [decision]
            broadcast_object_list(box)
            decision = box[0]
        return decision

    def undo_step(self, previous: dict[str, Tensor]) -> dict[str, Any] | None:
        """Restore the trainable weights of the step before and move its evaluation out of the dynamics."""
        self.model.load_state_dict(previous)
        if not self.dynamics:
            return None
        rejected = self.dynamics.pop()
        self.item_rows = [r for r in self.item_rows if r["step"] != rejected["step"]]
        return rejected

    @contextlib.contextmanager
    def full_weights(self):
        """Around main-process work on the weights (evaluation, checkpoint): under FSDP every process gathers the
        full weights (a collective) and the main process holds them inside the block (:meth:`ShardedModel.gathered`;
        changes made inside are discarded); otherwise nothing."""
        if self.sharding is None:
            yield
            return
        with self.sharding.gathered(keep=self.acc.is_main_process):
            yield

    def run_evaluation(self, step: int, *, view: bool = True) -> None:
        if self.evaluate is not None:
            with self.full_weights():
                if self.acc.is_main_process:
                    with self.unlearned_view() if view else contextlib.nullcontext(), torch.no_grad():
                        row, items = self.evaluate(step)
                    self.dynamics.append({"step": step, **row})
                    self.item_rows.extend({**r, "step": step} for r in items)
        self.acc.wait_for_everyone()

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def save(self, step: int, session: TrainingSession) -> None:
        if self.store is not None and self.sharding is not None:  # collectives first, on every process
            optimizer = ShardedModel.full_optimizer_state(session.optimizer)
            with self.full_weights():
                self._write_checkpoint(step, session, optimizer)
        elif self.store is not None:
            self._write_checkpoint(step, session, None)
        self.acc.wait_for_everyone()

    def _write_checkpoint(self, step: int, session: TrainingSession, optimizer: dict[str, Any] | None) -> None:
        if not self.acc.is_main_process or self.store is None:
            return
        if not self.resumed_store:  # a fresh run replaces whatever an earlier run left in the directory
            self.store.clear()
            self.resumed_store = True
        self.store.save(
            step,
            P.current(self.model, self.trainable),
            optimizer if optimizer is not None else session.optimizer.state_dict(),
            session.scheduler.state_dict(),
            {"loss_log": self.loss_log, "dynamics": self.dynamics, "item_rows": self.item_rows},
        )

    def restore(self, session: TrainingSession) -> int | None:
        path = self.store.latest() if self.store is not None else None
        if path is None:
            return None
        ckpt = self.store.load(path)
        self.resumed_store = True
        if set(ckpt.trainable) != set(self.trainable):
            raise InputError(f"--resume: checkpoint {path} holds other trainable parameters than this run")
        optimizer = ckpt.optimizer
        if self.sharding is not None:  # every process reads the same files and keeps its shard
            self.sharding.load(ckpt.trainable)
            optimizer = ShardedModel.sharded_optimizer_state(optimizer, session.optimizer)
        else:
            self.model.load_state_dict(ckpt.trainable)
        if session.masters is not None:
            session.masters.refresh()
        session.optimizer.load_state_dict(optimizer)
        session.scheduler.load_state_dict(ckpt.scheduler)
        self.loss_log = list(ckpt.progress.get("loss_log", []))
        self.dynamics = list(ckpt.progress.get("dynamics", []))
        self.item_rows = list(ckpt.progress.get("item_rows", []))
        return ckpt.step

    # -- one optimizer step ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """Trainable flags set, model and optimizer prepared by accelerate (or the model sharded, ``fsdp``: the
        trainable parameters are then the shards), gradient checkpointing switched on if configured; everything
        released (and switched off, the model gathered whole again) on exit."""
        cfg, acc = self.cfg, self.acc
        with (
            P.trainable_only(self.model, self.trainable) as params,
            self.sharded() if cfg.fsdp else contextlib.nullcontext(),
            maybe_checkpointing(self.model.hf, cfg.gradient_checkpointing) as checkpointing,
        ):
            if self.sharding is not None:  # the flags were set before sharding: the shards inherit them
                by_name = dict(self.model.named_parameters())
                params = [by_name[n] for n in self.trainable]
            prepared = acc.prepare(self.model.hf)
            masters = MasterWeights(params) if MasterWeights.needed(params) else None
            optimizer = torch.optim.AdamW(
                masters.masters if masters is not None else params, lr=cfg.lr, weight_decay=cfg.weight_decay
            )
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, partial(lr_factor, steps=cfg.steps, warmup=cfg.warmup_steps, schedule=cfg.lr_schedule)
            )
            session = TrainingSession(prepared, acc.prepare(optimizer), scheduler, params, checkpointing, masters)
            try:
                yield session
            finally:
                del session, prepared, optimizer, scheduler
                if self.owns_accelerator:
                    acc.free_memory()  # drops the DDP wrapper (its gradient buckets and hooks)

    @contextlib.contextmanager
    def sharded(self):
        """``model.hf`` sharded by FSDP inside the block, gathered whole on every process on exit (collective)."""
        self.sharding = sharding = ShardedModel(self.model)
        try:
            yield sharding
        except (UnlearningFailed, InputError):  # raised on every process alike: the model is gathered back
            self.sharding = None
            sharding.unshard()
            raise
        # anything else may have been raised on one process only: no collective then (the model stays sharded)
        self.sharding = None
        sharding.unshard()

    def check_finite(self, value: Tensor | float, what: str, step: int, terms: Tensor | None = None) -> None:
        if math.isfinite(float(value)):
            return
        detail = ""
        if terms is not None:
            detail = f" (forget loss {float(terms[1]):.4g}, retain loss {float(terms[2]):.4g})"
        raise UnlearningFailed(
            f"{what} became {float(value)} at step {step + 1} of {self.method.name}{detail}; stopped, nothing saved "
            f"as final (try a lower --lr than {self.cfg.lr:g})"
        )

    def step(self, step: int, session: TrainingSession) -> dict[str, Any]:
        """Optimizer step ``step`` (0-based): accumulate ``grad_accum`` micro-batches (each with the method's extra
        weight passes), clip, AdamW, schedule. The log row gains ``<label>_loss`` per extra pass."""
        passes = tuple(self.method.extra_passes(step))
        with session.checkpointing.active() if session.checkpointing is not None else contextlib.nullcontext():
            sums = self.accumulate(step, session, passes)
        row = self.update(step, session, sums[:3])
        row.update({f"{p.label}_loss": float(value) for p, value in zip(passes, sums[3:])})
        return row

    def accumulate(self, step: int, session: TrainingSession, passes: Sequence[WeightPass] = ()) -> Tensor:
        """The ``grad_accum`` micro-batches of step ``step``: forward, loss, backward, then each extra weight pass on
        the same batch; the mean logged terms (total, forget, retain, then one per pass)."""
        cfg, acc, model = self.cfg, self.acc, self.model
        sums = torch.zeros(3 + len(passes))
        for micro in range(cfg.grad_accum):
            batch = self.batch(step, micro)
            last = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if last and not passes else acc.no_sync(session.prepared):
                with model.forward_through(session.prepared):
                    policy = policy_forward(model, self.method, batch, checkpointing=session.checkpointing is not None)
                    terms: LossTerms = self.method.loss(policy)
                retain = (
                    terms.retain.detach() if terms.retain is not None else torch.zeros((), device=terms.total.device)
                )
                logged = acc.reduce(torch.stack([terms.total.detach(), terms.forget.detach(), retain]).float(), "mean")
                self.check_finite(logged[0], "the loss", step, logged)
                acc.backward(terms.total / cfg.grad_accum)
            sums[:3] += logged.cpu() / cfg.grad_accum
            for i, weight_pass in enumerate(passes):  # DDP all-reduces on the step's very last backward
                with contextlib.nullcontext() if last and i == len(passes) - 1 else acc.no_sync(session.prepared):
                    sums[3 + i] += self.weight_pass(weight_pass, batch, step, session) / cfg.grad_accum
        return sums

    def weight_pass(self, weight_pass: WeightPass, batch, step: int, session: TrainingSession) -> Tensor:
        """One extra forward + backward of ``batch`` under ``weight_pass``'s temporary weights (see
        :class:`~unpact_mech.unlearning.methods.base.WeightPass`); returns its loss (mean over processes)."""
        model = self.model
        with temporary_weights(list(zip(self.trainable, session.params)), weight_pass.weight):
            with model.forward_through(session.prepared):
                out = policy_forward(model, self.method, batch, checkpointing=session.checkpointing is not None)
                loss = weight_pass.loss(out)
            logged = self.acc.reduce(loss.detach().float().reshape(1), "mean")
            self.check_finite(logged[0], f"the {weight_pass.label} pass's loss", step)
            self.acc.backward(loss / self.cfg.grad_accum)  # recomputed layers (checkpointing) see the same weights
        return logged.cpu()[0]

    def update(self, step: int, session: TrainingSession, sums: Tensor) -> dict[str, Any]:
        """Clip, AdamW step, schedule step after the gradients of step ``step`` were accumulated."""
        cfg, acc = self.cfg, self.acc
        grad_norm = float("nan")
        if session.masters is not None:
            session.masters.grads_to_masters()
        if cfg.max_grad_norm > 0:
            grad_norm = float(acc.clip_grad_norm_(session.optimized, cfg.max_grad_norm))
            self.check_finite(grad_norm, "the gradient norm", step)
        lr = session.optimizer.param_groups[0]["lr"]
        session.optimizer.step()
        if session.masters is not None:
            session.masters.masters_to_params()
        session.scheduler.step()
        session.optimizer.zero_grad(set_to_none=True)
        return {
            "step": step + 1,
            "lr": lr,
            "loss": float(sums[0]),
            "forget_loss": float(sums[1]),
            "retain_loss": float(sums[2]) if self.method.needs_retain else float("nan"),
            "grad_norm": grad_norm,
        }

    # -- the run -----------------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        cfg, acc, model, method = self.cfg, self.acc, self.model, self.method
        self.base = P.snapshot(model, self.trainable)
        if cfg.fsdp and method.weight_pass_labels:  # sharded parameters cannot be swapped for whole matrices
            labels = ", ".join(method.weight_pass_labels)
            raise InputError(f"method {method.name}: its extra weight passes ({labels}) do not work with --fsdp")
        method.setup(model, self.data, seed=cfg.seed)  # reference quantities from the base weights
        train_seconds = 0.0
        try:
            with self.session() as session:
                resumed = self.restore(session) if resume else None
                start = resumed or 0
                if resumed is None:
                    self.run_evaluation(0)
                bar = progress_bar(
                    total=cfg.steps,
                    initial=start,
                    desc=f"unlearn {method.name}",
                    leave=False,
                    enabled=self.progress and acc.is_main_process,
                )
                rule, done = cfg.stop_rule, start
                for step in range(start, cfg.steps):
                    previous = P.snapshot(model, self.trainable) if rule and rule.max_utility_drop is not None else None
                    t_step = time.perf_counter()
                    row = self.step(step, session)
                    row["seconds"] = time.perf_counter() - t_step
                    train_seconds += row["seconds"]
                    self.loss_log.append(row)
                    bar.update(1)
                    bar.set_postfix(
                        forget=f"{row['forget_loss']:.3f}", retain=f"{row['retain_loss']:.3f}", refresh=False
                    )
                    done = step + 1
                    every = cfg.evaluation_interval
                    if every and done % every == 0 and (done < cfg.steps or rule is not None):
                        self.run_evaluation(done)
                    decision = self.stop_check(rule) if rule is not None else None
                    if decision is not None:
                        self.stop_reason, undo = decision
                        if undo and previous is not None:
                            rejected = self.undo_step(previous)
                            self.rejected += [rejected] if rejected else []
                            done -= 1
                        break
                    if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                        self.save(done, session)
                    if self.callback is not None:
                        self.callback(done)
                bar.close()
                if rule is not None and self.stop_reason is None:
                    self.stop_reason = rule_not_met(rule, self.dynamics, cfg.steps)
        finally:
            method.teardown()
        trained = P.snapshot(model, self.trainable)
        if method.transforms_weights:
            model.load_state_dict(method.unlearned_weights(self.base, trained))
        changed = P.changed(self.base, P.current(model, self.trainable))
        if not changed and not (self.rejected and done == 0):  # a stop rule undoing step 1 keeps the base: said so
            raise UnlearningFailed(
                f"no weight changed after {cfg.steps} steps of {method.name} (lr {cfg.lr:g} too small for float32, or "
                "the trainable parameters get no gradient from this loss)"
            )
        if not self.dynamics or self.dynamics[-1]["step"] != done:
            self.run_evaluation(done, view=False)  # the weights are already the unlearned ones
        return TrainResult(
            cfg.steps,
            self.loss_log,
            self.dynamics,
            self.item_rows,
            self.base,
            self.trainable,
            changed,
            resumed_from=resumed,
            train_seconds=train_seconds,
            steps_run=done,
            stop_reason=self.stop_reason,
            rejected=self.rejected,
        )


def train(
    model: "HookedLM",
    method: UnlearningMethod,
    data: UnlearningSet,
    config: TrainConfig,
    *,
    trainable: Sequence[str],
    store: CheckpointStore | None = None,
    resume: bool = False,
    evaluate: Evaluate | None = None,
    accelerator=None,
    progress: bool = True,
    callback: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with ``method`` on ``data``; return the logs and evaluations.

    ``trainable``: HF parameter names to train (see :func:`~unpact_mech.unlearning.params.select_trainable`).
    ``store`` + ``resume``: continue from the store's latest checkpoint (its fingerprint must match).
    ``evaluate(step)`` runs at step 0 (fresh runs), every ``config.eval_every`` steps and after the last step, on
    the unlearned weights. ``callback(step)`` runs after every optimizer step (tests use it to interrupt a run).
    Raises :class:`UnlearningFailed` on a non-finite loss/gradient norm or when no weight changed. With an
    ``accelerator`` of your own, call its ``free_memory()`` when done (the loop frees only one it created).
    """
    trainer = Trainer(
        model,
        method,
        data,
        config,
        trainable=trainable,
        store=store,
        evaluate=evaluate,
        accelerator=accelerator,
        progress=progress,
        callback=callback,
    )
    return trainer.run(resume)
