"""Unlearn a model in place (:func:`unlearn`) and write the result as a loadable model directory
(:func:`write_unlearned`). The ``unpact unlearn`` command is a thin layer over these two.

>>> model = load_model("smollm2")                                            # doctest: +SKIP
>>> result = unlearn(model, load_items("builtin:real_facts"), "npo_gdr")     # doctest: +SKIP
>>> result.summary["forget_accuracy_after"], model.lineage[-1]["method"]     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from unpact_mech.data.splits import RETAIN, SPLITS, UTILITY, split_items
from unpact_mech.errors import InputError
from unpact_mech.io.atomic import check_outside
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS
from unpact_mech.unlearning import params as P
from unpact_mech.unlearning.batches import UnlearningSet
from unpact_mech.unlearning.checkpoint import CheckpointStore
from unpact_mech.unlearning.dynamics import make_evaluator, plot_dynamics
from unpact_mech.unlearning.loop import TrainConfig, TrainResult, train
from unpact_mech.unlearning.methods import HYPERPARAMETERS, UnlearningMethod, get_unlearning_method

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.io.results import RunWriter
    from unpact_mech.models.hooked import HookedLM

TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))
#: The optimisation settings a run's summary records (the evaluation / checkpoint / stop-rule fields have their own
#: keys).
OPTIMISATION_FIELDS = TRAIN_OPTIONS[: TRAIN_OPTIONS.index("seed") + 1]
#: Options a resumed run may change (they change memory and time, not the weights): a run that ran out of memory
#: resumes with ``--gradient-checkpointing`` (or ``--fsdp``).
NOT_FINGERPRINTED = ("gradient_checkpointing", "fsdp")


def resolve_config(method: UnlearningMethod, **options: Any) -> TrainConfig:
    """A :class:`TrainConfig` from ``options`` (None = the method's recipe / TrainConfig default)."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        hp = [k for k in unknown if k in HYPERPARAMETERS]
        taken = [k for k in hp if k in method.hyperparameters]
        hint = ""
        if taken:  # name the keyword the function does take, with the value given
            given = ", ".join(f"{k!r}: {options[k]!r}" for k in taken)
            hint = f"; method hyperparameters go in hyperparameters={{{given}}}"
        if len(taken) < len(hp):
            other = ", ".join(k for k in hp if k not in taken)
            usable = ", ".join(method.hyperparameters) or "none"
            hint += f"; {other}: not a hyperparameter of {method.name} (it takes: {usable})"
        raise InputError(
            f"unknown training option(s) {', '.join(unknown)}{hint} (training options: {', '.join(TRAIN_OPTIONS)})"
        )
    given = {k: v for k, v in options.items() if v is not None}
    recipe = method.recipe
    given.setdefault("steps", recipe.steps)
    given.setdefault("lr", recipe.lr)
    given.setdefault("batch_size", recipe.batch_size)
    return TrainConfig(**given)


def _data_digest(items: Sequence["QAItem"]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.id, it.question, it.answer, it.split], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


@dataclass
class UnlearnResult:
    """The outcome of :func:`unlearn` (the model itself was updated in place)."""

    method: UnlearningMethod
    config: TrainConfig
    trainable_pattern: str | None
    train: TrainResult
    summary: dict[str, Any]
    lineage_record: dict[str, Any]

    def results_table(self) -> pd.DataFrame:
        """Long format: ``item_id, split, metric, value, generation, step, method`` — every evaluation of every item
        (``generation``: the greedy answer scored at that step)."""
        columns = ["item_id", "split", "metric", "value", "generation", "step"]
        table = pd.DataFrame(self.train.item_rows, columns=columns)
        table["method"] = self.method.name
        return table

    def dynamics_table(self) -> pd.DataFrame:
        """One row per evaluation step: ``step, forget_accuracy, retain_accuracy, forget_logprob, ...``."""
        return pd.DataFrame(self.train.dynamics)

    def loss_table(self) -> pd.DataFrame:
        """One row per optimizer step: ``step, lr, loss, forget_loss, retain_loss, grad_norm``, then the loss of each
        extra weight pass of the method (``<label>_loss``, e.g. keyguard's ``noise_loss``) if any, then ``seconds``."""
        columns = ["step", "lr", "loss", "forget_loss", "retain_loss", "grad_norm"]
        passes = [k for k in (self.train.loss_log[0] if self.train.loss_log else {}) if k.endswith("_loss")]
        columns += [k for k in passes if k not in columns]
        return pd.DataFrame(self.train.loss_log, columns=[*columns, "seconds"])


def _summary(
    method: UnlearningMethod,
    cfg: TrainConfig,
    pattern: str | None,
    res: TrainResult,
    model: "HookedLM",
    data: UnlearningSet,
) -> dict[str, Any]:
    after = P.current(model, res.trainable)
    first = res.dynamics[0] if res.dynamics and res.dynamics[0]["step"] == 0 else {}
    last = res.dynamics[-1] if res.dynamics else {}
    summary: dict[str, Any] = {"method": method.name, "hyperparameters": dict(method.hp)}
    for split in SPLITS:
        for metric in ("accuracy", "logprob"):
            key = f"{split}_{metric}"
            summary[f"{key}_before"] = first.get(key)
            summary[f"{key}_after"] = last.get(key)
    summary |= destructive_rates(res)
    if summary["utility_accuracy_before"] is None:
        summary["utility_note"] = "no utility items: collateral damage is measured on retain (trained-on) items only"
    n_params = sum(v.numel() for v in res.base.values())
    summary.update(
        weight_delta_norm=P.delta_norm(res.base, after),
        relative_weight_delta=P.delta_norm(res.base, after) / max(P.norm(res.base), 1e-30),
        **{k: getattr(cfg, k) for k in OPTIMISATION_FIELDS},
        trainable=pattern or "all parameters",
        n_trainable_tensors=len(res.trainable),
        n_trainable_parameters=n_params,
        n_changed_tensors=len(res.changed),
        n_forget=len(data.forget),
        n_retain=len(data.retain),
        n_generated_targets=sum(t.source == "generated" for t in data.forget + data.retain),
        train_seconds=res.train_seconds,
        steps_run=res.steps_run,
        stop_reason=res.stop_reason,
        rejected_steps=[r["step"] for r in res.rejected],
        resumed_from_step=res.resumed_from,
        stop_when_forget_below=cfg.stop_when_forget_below,
        max_utility_drop=cfg.max_utility_drop,
        gradient_checkpointing=cfg.gradient_checkpointing,
        final_forget_loss=res.loss_log[-1]["forget_loss"] if res.loss_log else None,
        final_retain_loss=res.loss_log[-1]["retain_loss"] if res.loss_log else None,
        dynamics=res.dynamics,
    )
    return summary


class ForgettingWarning(UserWarning):
    """:func:`unlearn` ran but the forget accuracy fell by less than half of its start (see :func:`weak_forgetting`)."""


def weak_forgetting(summary: Mapping[str, Any]) -> str | None:
    """One line saying that a run did not forget, and what to change — or None when it did.

    "Did not forget": the forget accuracy fell by less than half of its starting value (``after > before / 2``),
    and no forget target of the stop rule was met (a target the user set and reached is what they asked for). None
    too when nothing was evaluated or the model knew no forget item at the start."""
    before, after = summary.get("forget_accuracy_before"), summary.get("forget_accuracy_after")
    if before is None or after is None or not before > 0 or after <= before / 2:
        return None
    target = summary.get("stop_when_forget_below")
    if target is not None and after <= target + 1e-12:
        return None
    steps, lr = summary.get("steps_run"), summary.get("lr")
    head = f"forget accuracy went from {before:.2f} to {after:.2f}, down by less than half: the recipe did not forget"
    if summary.get("rejected_steps"):  # the utility limit, not the step budget, ended it
        return (
            f"{head} before the --max-utility-drop limit stopped it after {steps} steps; try a larger limit, or a "
            f"smaller --lr (it was {lr:g}) with more --steps"
        )
    advice = [f"more --steps (it ran {steps})", f"a larger --lr (it was {lr:g})"]
    if target is None:
        advice.append("--stop-when-forget-below ACC with a generous --steps (train until it forgets)")
    return f"{head}; try {', '.join(advice[:-1])} or {advice[-1]}"


def destructive_rates(res: TrainResult) -> dict[str, Any]:
    """Destructive rate per held split between the first and the last evaluation: among the items the model answered
    correctly at the first, the share it answers wrongly at the last (utility: held out; retain: the trained-on
    anchor), with its exact interval; None for a split without items."""
    from unpact_mech.stats import destructive_rate

    table = pd.DataFrame(res.item_rows)
    out: dict[str, Any] = {}
    for split in (UTILITY, RETAIN):
        rows = table[(table["metric"] == "correct") & (table["split"] == split)] if len(table) else table
        steps = sorted(rows["step"].unique()) if len(rows) else []
        value = low = high = None
        if len(steps) >= 2:
            wide = rows.pivot_table(index="item_id", columns="step", values="value", aggfunc="first")
            d = destructive_rate(wide[steps[0]].to_numpy(bool), wide[steps[-1]].to_numpy(bool))
            if d.n:
                value, low, high = d.value, d.low, d.high
        out |= {f"{split}_destructive_rate": value, f"{split}_destructive_rate_ci_low": low,
                f"{split}_destructive_rate_ci_high": high}  # fmt: skip
    return out


def prebuilt_targets(
    targets: UnlearningSet, items: Sequence["QAItem"], *, target: str, with_retain: bool, where: str
) -> UnlearningSet:
    """``targets`` checked against ``items`` (the same forget and retain items in order; ``target="gold"`` needs gold
    targets throughout), without its retain part when the method has no retain term."""
    forget, retain = UnlearningSet.split(items, where=where)
    ids = [t.item_id for t in targets.forget], [t.item_id for t in targets.retain]
    if ids[0] != [it.id for it in forget] or (with_retain and ids[1] != [it.id for it in retain]):
        raise InputError(f"targets: the prebuilt training targets are not those of the forget/retain items of {where}")
    if target == "gold" and any(t.source != "gold" for t in (*targets.forget, *targets.retain)):
        raise InputError("targets: target='gold' but the prebuilt training targets are the model's own answers")
    return targets if with_retain else replace(targets, retain_items=(), retain=())


def unlearn(
    model: "HookedLM",
    items: Sequence["QAItem"],
    method: str | UnlearningMethod = "npo_gdr",
    *,
    hyperparameters: Mapping[str, float | None] | None = None,
    trainable: str | None = None,
    target: str = "generated",
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    evaluate: bool = True,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = True,
    accelerator=None,
    callback: Callable[[int], None] | None = None,
    data_label: str = "items",
    initial_evaluation: pd.DataFrame | None = None,
    targets: UnlearningSet | None = None,
    **train_options: Any,
) -> UnlearnResult:
    """Unlearn the ``forget`` items of ``items`` from ``model`` IN PLACE (its ``.hf`` parameters) and extend
    ``model.lineage`` with the run.

    ``method``: a registered name or a method object; ``hyperparameters``: overrides of its defaults;
    ``trainable``: regex over HF parameter names (default: the method's, e.g. RMU's MLPs; else all);
    ``target``: ``generated`` (the base model's own answer up to the gold answer; loss on the answer tokens) or
    ``gold`` (the bare gold answer), see :mod:`~unpact_mech.unlearning.targets`;
    ``train_options``: :class:`TrainConfig` fields (``steps``, ``lr``, ``batch_size``, ``grad_accum``, ``seed``,
    ``lr_schedule``, ``warmup_steps``, ``max_grad_norm``, ``weight_decay``, ``eval_every``, ``checkpoint_every``,
    ``gradient_checkpointing``, ``fsdp``: shard over the processes of a launch, :mod:`~unpact_mech.unlearning.fsdp`),
    unset ones from the method's recipe. ``evaluate``: greedy accuracy + LP of all
    items at step 0, every ``eval_every`` steps and at the end; ``initial_evaluation``: the
    :func:`~unpact_mech.scoring.evaluate.evaluate_items` frame of ``items`` on the current weights (same judge and
    answer length), used as the step-0 evaluation instead of computing it again; ``targets``: the training targets
    already built from ``items`` on the same base weights (:meth:`UnlearningSet.from_items` with ``target``; e.g. one
    set shared by several methods unlearned from one base model), checked to hold the same forget and retain items,
    instead of generating the base model's answers again. Bad input raises
    :class:`InputError` before any update; :class:`~unpact_mech.unlearning.loop.UnlearningFailed` means the run
    failed (NaN, no weight changed).
    """
    m = get_unlearning_method(method, **dict(hyperparameters or {})) if isinstance(method, str) else method
    cfg = resolve_config(m, **train_options)
    m.check_model(model)
    _, retain_items = UnlearningSet.split(items, where=data_label)
    if cfg.max_utility_drop is not None and not split_items(items, UTILITY):
        raise InputError(
            f'--max-utility-drop: {data_label} has no utility items ("split": "utility"), the held-out facts the '
            "limit is measured on"
        )
    if m.needs_retain and not retain_items:
        raise InputError(
            f'method {m.name} has a retain term but {data_label} has no retain items ("split": "retain"); '
            "add retain items or use a method without one (ga, npo)"
        )
    pattern = trainable if trainable is not None else m.default_trainable(model)
    names = P.select_trainable(model, pattern)
    store = None
    if checkpoint_dir is not None:
        check_outside(checkpoint_dir, model.source_dir, "checkpoint directory")
        fingerprint = {
            **m.describe(),
            # how often it evaluates / saves, and whether it recomputes activations, do not change the weights
            **{k: v for k, v in vars(cfg).items() if k not in ("eval_every", "checkpoint_every", *NOT_FINGERPRINTED)},
            "trainable": pattern,
            "target": target,
            "data": _data_digest(items),
            "model": str(model.source_dir),
            "lineage_depth": len(model.lineage),
        }
        store = CheckpointStore(checkpoint_dir, fingerprint)
    if targets is None:
        data = UnlearningSet.from_items(
            model, items, where=data_label, target=target, with_retain=m.needs_retain, batch_size=eval_batch_size
        )
    else:
        data = prebuilt_targets(targets, items, target=target, with_retain=m.needs_retain, where=data_label)
    evaluator = (
        make_evaluator(
            model, items, batch_size=eval_batch_size, max_new_tokens=max_new_tokens, initial=initial_evaluation
        )
        if evaluate
        else None
    )
    res = train(
        model,
        m,
        data,
        cfg,
        trainable=names,
        store=store,
        resume=resume,
        evaluate=evaluator,
        accelerator=accelerator,
        progress=progress,
        callback=callback,
    )
    summary = _summary(m, cfg, pattern, res, model, data) | {"target": target}
    note = weak_forgetting(summary)
    if note is not None:
        summary["forget_note"] = note
        warnings.warn(note, ForgettingWarning, stacklevel=2)
    record = {
        "role": "unlearned",
        **m.describe(),
        "target": target,
        "steps": res.steps_run,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "seed": cfg.seed,
        "trainable": pattern or "all parameters",
        "data": data_label,
        "n_forget": len(data.forget),
        "n_retain": len(data.retain),
        "base": model.name,
        "weight_delta_norm": summary["weight_delta_norm"],
    }
    model.lineage = list(model.lineage) + [record]
    return UnlearnResult(m, cfg, pattern, res, summary, record)


def write_unlearned(
    model: "HookedLM",
    result: UnlearnResult,
    out: str | os.PathLike,
    *,
    run: "RunWriter",
    overwrite: bool = False,
) -> Path:
    """Write the unlearned model as a loadable SPEC directory, atomically: HF weights/config/tokenizer,
    ``run.json`` (lineage base → unlearned), ``results.csv``, ``summary.json``, ``dynamics.csv``,
    ``training_log.csv`` and ``dynamics.png``."""
    from unpact_mech.io import atomic_output_dir, atomic_write_text, write_json

    for earlier in model.lineage:
        if earlier.get("path"):
            check_outside(out, earlier["path"], "--out")
    check_outside(out, model.source_dir, "--out")
    dynamics, losses = result.dynamics_table(), result.loss_table()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.write_pretrained(tmp)
        write_json(tmp / "unpact_model.json", {"name": model.name, "lineage": model.lineage})
        run.lineage = model.lineage
        run.write(tmp, result.results_table(), result.summary)
        atomic_write_text(tmp / "dynamics.csv", dynamics.to_csv(index=False))
        atomic_write_text(tmp / "training_log.csv", losses.to_csv(index=False))
        if len(dynamics):
            plot_dynamics(
                dynamics,
                losses,
                tmp / "dynamics.png",
                title=f"{result.method.name} (lr {result.config.lr:g}, {result.config.steps} steps)",
            )
    return Path(out)
