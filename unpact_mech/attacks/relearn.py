"""Recovery by relearning: ask a copy of the model fine-tuned for a few steps (model transforms, family
``relearning``).

Unlearning that only suppresses knowledge comes back after very little fine-tuning — even fine-tuning on data that
has nothing to do with it. Two conditions test this:

======================  ==========================================================================================
``relearn_unrelated``   benign relearning (Łucki et al., arXiv 2409.18025): ``steps`` AdamW steps of NLL on the gold
                        answers of ``n_items`` UNRELATED QA items (``unrelated_qa.jsonl``, benign general knowledge
                        disjoint from the built-in facts, or the user's ``data=PATH``), drawn with the run's seed.
                        Any recovery is knowledge that was hidden, not removed: the training data cannot teach it.
``relearn_split``       held-out-split relearning (Deeb & Roger, arXiv 2410.08827): the forget items
                        (``env.fit_ids``) are split into two folds; an item of fold f is asked of a copy fine-tuned
                        on the gold answers of the OTHER fold. A scored item is never in the data of the copy that
                        scores it, so recovering it means the unlearning of fold f was undone by relearning fold
                        1 − f. Items outside the fit set (retain / utility controls) are asked of the copy trained on
                        fold 0 (the copy that scores fold 1).
======================  ==========================================================================================

Training reuses the unlearning loop (:func:`unpact_mech.unlearning.loop.train`): a small unregistered method whose
loss is ``L = NLL(y | x)`` (:func:`unpact_mech.unlearning.losses.nll`, a token mean over the answer tokens) on the
GOLD answers right after the prompt (``target="gold"`` of :mod:`~unpact_mech.unlearning.targets`: the model's own
greedy phrasing is a property of the model being attacked, not of the data an attacker holds), every parameter
trainable, AdamW, constant lr, gradient-norm clip 1.0, no weight decay — the settings of the unlearning runs. Batches
of ``batch_size`` items are drawn by the loop's seeded sampler (a pure function of the run's seed and the step), so a
relearned copy is bit-for-bit reproducible on the CPU. The loop refuses a run in which no weight changed
(:class:`~unpact_mech.unlearning.loop.UnlearningFailed`: an lr below float32 resolution), as it does for unlearning.

Default ``lr = 1e-5``: the learning rate of every full-model gradient recipe
(``unpact_mech/unlearning/methods/*.py``: ga, ga_gdr, ga_klr, npo, npo_gdr, npo_klr, simnpo, task_vector), so a
relearning step moves the weights about as far as an unlearning step did; ``rmu`` and ``keyguard`` use 1e-3, but on
three MLPs only. The battery runs ``steps`` = 1, 5 and 10 (labels ``relearn_unrelated[k1]`` ...).

Controls: the runner's ``original_control`` arm applies the same relearning to the ORIGINAL model (a fine-tune that
changes what the original answers is not a clean recovery). ``relearn_split`` also records, once per run, a
calibration on invented facts (:func:`relearn_split_calibration` on ``fictional_facts.jsonl``): the same two-fold
procedure on facts no model can know, whose held-out accuracy is what relearning teaches by itself (≈ 0 expected).
Detail tables: ``training`` (one row per relearned copy: its training fold, size, loss before and after, ‖Δw‖) and,
for ``relearn_split``, ``fictional_control``.

Each relearned copy is a full copy of the model kept for the run (``env.memo``): ``relearn_split`` makes two per model
it is applied to, ``relearn_unrelated`` one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from unpact_mech.attacks.base import AttackEnv, ModelAttack, Treatment, memo_key
from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.attacks.keywords import ItemKeywords
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.unlearning.targets import TrainTarget

#: Defaults shared by both conditions (see the module docstring for the choice of lr).
DEFAULT_STEPS = 5
DEFAULT_LR = 1e-5
DEFAULT_BATCH_SIZE = 10
DEFAULT_N_ITEMS = 10
#: ``relearn_split`` cross-fits over two folds of the forget items.
N_FOLDS = 2


@dataclass(frozen=True)
class Relearned:
    """A relearned copy: ``model``, the ids it was trained on, the token-mean NLL of their gold answers before and
    after training, ``delta_norm`` = ‖θ_after − θ_before‖₂ over all parameters, and the optimizer steps run."""

    model: "HookedLM"
    train_ids: tuple[str, ...]
    initial_loss: float
    final_loss: float
    delta_norm: float
    steps: int

    def row(self, **columns: Any) -> dict[str, Any]:
        """One row of the ``training`` detail table (``columns`` first)."""
        return {
            **columns, "n_train": len(self.train_ids), "steps": self.steps, "initial_loss": self.initial_loss,
            "final_loss": self.final_loss, "delta_norm": self.delta_norm, "train_ids": " | ".join(self.train_ids),
        }  # fmt: skip


def gold_targets(model: "HookedLM", items: Sequence["QAItem"]) -> tuple["TrainTarget", ...]:
    """The gold answer right after each item's prompt (the model's prompt format), as training targets."""
    from unpact_mech.scoring.tokens import encode_items
    from unpact_mech.unlearning.targets import build_targets

    return tuple(build_targets(model, items, encode_items(model, items), target="gold"))


def answer_nll(model: "HookedLM", targets: Sequence["TrainTarget"], batch_size: int = 16) -> float:
    """Token-mean NLL of the targets' answers: ``−Σ_i S(i) / Σ_i |y_i|`` with ``S(i) = log p(y_i | x_i)`` (the loss
    the training minimises, over all items at once); NaN without targets."""
    from unpact_mech.scoring.logprob import score_answers

    if not targets:
        return float("nan")
    scores = score_answers(
        model, [t.input_prefix for t in targets], [t.answer_ids for t in targets], batch_size=batch_size
    )
    return float(-scores.logprob_sum.double().sum() / sum(len(t.answer_ids) for t in targets))


def relearn(
    model: "HookedLM",
    items: Sequence["QAItem"],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
    desc: str = "relearn",
) -> Relearned:
    """A copy of ``model`` fine-tuned for ``steps`` AdamW steps of NLL on the gold answers of ``items`` (batches of
    ``batch_size`` drawn with ``seed``); ``model`` is not changed. ``steps == 0`` or no items: an untrained copy
    (weights equal to the model's)."""
    from unpact_mech.distributed import local_accelerator
    from unpact_mech.unlearning import params as P
    from unpact_mech.unlearning.batches import UnlearningSet
    from unpact_mech.unlearning.loop import TrainConfig, train
    from unpact_mech.unlearning.relearning import RelearnNLL
    from unpact_mech.utils import progress_bar

    copy = model.reference_copy()
    copy.hf.to(model.device)
    ids = tuple(it.id for it in items)
    targets = gold_targets(copy, items) if items else ()
    initial = answer_nll(copy, targets)
    if steps == 0 or not items:
        copy.name = f"{model.name} (relearned: 0 steps)"
        return Relearned(copy, ids, initial, initial, 0.0, 0)
    data = UnlearningSet(tuple(items), (), targets, ())
    config = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    bar = progress_bar(total=steps, desc=desc, leave=False, enabled=progress)
    try:
        result = train(  # each process of a launch trains its own copy as one process would (no DDP between them)
            copy, RelearnNLL(), data, config, trainable=P.select_trainable(copy, None), progress=False,
            callback=lambda step: bar.update(1), accelerator=local_accelerator(),
        )  # fmt: skip
    finally:
        bar.close()
    delta = P.delta_norm(result.base, P.current(copy, result.trainable))
    copy.name = f"{model.name} (relearned: {steps} steps on {len(items)} items)"
    copy.lineage = list(copy.lineage) + [{
        "role": "relearned", "weights_changed": True, "steps": steps, "lr": lr, "items": list(ids),
    }]  # fmt: skip
    return Relearned(copy, ids, initial, answer_nll(copy, targets), delta, steps)


def seeded_folds(item_ids: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """A fixed fold per id: ids ordered by ``sha256(f"{seed}:{id}")``, fold = position mod ``folds`` (balanced to
    within one item, independent of input order, the same in every arm of a run).

    Not :func:`~unpact_mech.attacks.activation.fold_of`'s sorted order: ids often encode structure (the synthetic
    facts' ``syn-<relation>-<country>`` alternate between the two forget countries, so sorted order would put one
    country in each fold); a seeded order splits the facts at random, as in Deeb & Roger."""

    def key(item_id: str) -> tuple[str, str]:
        return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest(), item_id

    return {item_id: n % folds for n, item_id in enumerate(sorted(set(item_ids), key=key))}


def check_training_options(name: str, steps: Any, lr: Any, batch_size: Any) -> None:
    """One-line :class:`InputError` naming the option for steps < 0 (or not an integer), lr <= 0 (or not finite),
    batch_size < 1."""
    where = f"model transform {name}"
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"{where}: steps must be an integer >= 0, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InputError(f"{where}: lr must be a finite number > 0, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"{where}: batch_size must be an integer >= 1, got {batch_size!r}")


def _label(name: str, steps: int, lr: float, batch_size: int, *extra: str) -> str:
    """``name[k<steps>]``, then the options that differ from their defaults (labels must tell conditions apart)."""
    parts = [f"k{steps}"]
    parts += [f"lr{lr:g}"] if lr != DEFAULT_LR else []
    parts += [f"b{batch_size}"] if batch_size != DEFAULT_BATCH_SIZE else []
    return f"{name}[{','.join(parts + [e for e in extra if e])}]"


@dataclass(frozen=True)
class Relearning(ModelAttack):
    """What both relearning conditions share: the family and the optimisation options (``steps`` AdamW steps at
    ``lr`` in batches of ``batch_size``; see the module docstring), validated by :meth:`resolve`."""

    family: str = "relearning"
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH_SIZE

    original_arm_shared: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ("steps", "lr", "batch_size")

    def resolve(self, model: "HookedLM") -> "Relearning":
        check_training_options(self.name, self.steps, self.lr, self.batch_size)
        return self


@dataclass(frozen=True)
class RelearnUnrelated(Relearning):
    """Ask a copy fine-tuned for ``steps`` AdamW steps (lr ``lr``, batches of ``batch_size``) on the gold answers of
    ``n_items`` unrelated QA items, drawn with the run's seed from ``unrelated_qa.jsonl`` or from ``data`` (a QA file,
    any format :func:`~unpact_mech.data.loaders.load_items` reads; it is the user's job that it is unrelated to the
    forget set). ``steps=0`` is an exact no-op."""

    name: str = "relearn_unrelated"
    description: str = "a few AdamW steps of NLL on the gold answers of unrelated QA items (benign relearning)"
    n_items: int = DEFAULT_N_ITEMS
    data: str = ""

    options: ClassVar[tuple[str, ...]] = ("steps", "lr", "n_items", "batch_size", "data")

    @property
    def label(self) -> str:
        extra = (
            f"n{self.n_items}" if self.n_items != DEFAULT_N_ITEMS else "",
            Path(self.data).stem if self.data else "",
        )
        return _label(self.name, self.steps, self.lr, self.batch_size, *extra)

    def pool(self) -> list["QAItem"]:
        """Every item the training items are drawn from (the built-in file, or ``data``)."""
        if not self.data:
            from unpact_mech.data.loaders import load_items

            return load_items("builtin:unrelated_qa")
        from unpact_mech.data.loaders import load_items

        try:
            return load_items(self.data)
        except InputError as err:
            raise InputError(f"model transform {self.name}: data={self.data}: {err}") from None

    def resolve(self, model: "HookedLM") -> "RelearnUnrelated":
        super().resolve(model)
        n = self.n_items
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"model transform {self.name}: n_items must be an integer >= 1, got {n!r}")
        available = len(self.pool())
        if n > available:
            source = f"data={self.data}" if self.data else "the built-in unrelated_qa.jsonl"
            raise InputError(f"model transform {self.name}: n_items={n} but {source} has only {available} items")
        return self

    def training_items(self, seed: int) -> list["QAItem"]:
        """``n_items`` items drawn without replacement from :meth:`pool` (sorted by id first) with ``seed``."""
        import random

        pool = sorted(self.pool(), key=lambda it: it.id)
        return random.Random(seed).sample(pool, min(self.n_items, len(pool)))

    def transform(self, model: "HookedLM", env: AttackEnv) -> "HookedLM":
        items = self.training_items(env.seed)
        result = relearn(
            model, items, steps=self.steps, lr=self.lr, batch_size=self.batch_size, seed=env.seed,
            progress=env.progress, desc=f"{self.label} ({env.role(model)})",
        )  # fmt: skip
        data = self.data or "builtin:unrelated_qa"
        env.record(self.label, "training", pd.DataFrame([result.row(model=env.role(model), data=data, lr=self.lr)]))
        return result.model


@dataclass(frozen=True)
class RelearnSplit(Relearning):
    """Held-out-split relearning, cross-fitted over two folds of the forget items (:func:`seeded_folds` of
    ``env.fit_ids`` and the run's seed): an item of fold f is asked of a copy relearned (``steps``, ``lr``,
    ``batch_size``) on the gold answers of the forget items of fold 1 − f; an item outside the fit set is asked of
    the copy trained on fold 0. Each copy is trained once per model and condition. Applied to the unlearned model, it
    also records the calibration on invented facts (:func:`relearn_split_calibration`) as the detail
    ``fictional_control``.
    """

    name: str = "relearn_split"
    description: str = "fine-tune on the gold answers of one half of the forget items, ask the other half"

    @property
    def label(self) -> str:
        return _label(self.name, self.steps, self.lr, self.batch_size)

    def folds(self, env: AttackEnv) -> dict[str, int]:
        """The fold of every fit item (fixed for the run)."""
        return env.cached((self.label, "folds"), lambda: seeded_folds(env.fit_ids, N_FOLDS, env.seed))

    def training_fold(self, item_id: str, env: AttackEnv) -> int:
        """The fold whose items train the copy that asks ``item_id``: the other fold; 0 outside the fit set."""
        fold = self.folds(env).get(item_id)
        return 0 if fold is None else (fold + 1) % N_FOLDS

    def relearned(self, model: "HookedLM", env: AttackEnv, train_fold: int) -> Relearned:
        """The copy of ``model`` relearned on the forget items of ``train_fold`` (once per model, fold and
        condition; its ``training`` row is recorded then)."""

        def fit() -> Relearned:
            folds = self.folds(env)
            ids = sorted(i for i in env.fit_ids if folds[i] == train_fold)
            role = env.role(model)
            result = relearn(
                model, [env.items[i] for i in ids], steps=self.steps, lr=self.lr, batch_size=self.batch_size,
                seed=env.seed, progress=env.progress, desc=f"{self.label} ({role}, fold {train_fold})",
            )  # fmt: skip
            row = result.row(model=role, train_fold=train_fold, scored_fold=(train_fold + 1) % N_FOLDS, lr=self.lr)
            env.record(self.label, "training", pd.DataFrame([row]))
            return result

        return env.cached(memo_key(model, (self.label, train_fold)), fit)

    def transform(self, model: "HookedLM", env: AttackEnv) -> "HookedLM":
        """The copy that asks the items outside the fit set (trained on fold 0)."""
        return self.relearned(model, env, 0).model

    def groups(self, items: Sequence["QAItem"], env: AttackEnv) -> list[tuple[list[int], int]]:
        """``(indices into items, training fold)`` per copy, in fold order; folds without items are left out."""
        by_fold: dict[int, list[int]] = {}
        for n, it in enumerate(items):
            by_fold.setdefault(self.training_fold(it.id, env), []).append(n)
        return [(by_fold[f], f) for f in sorted(by_fold)]

    def treat_groups(
        self, model: "HookedLM", items: Sequence["QAItem"], emphasis: Sequence["ItemKeywords"], env: AttackEnv
    ) -> list[tuple[list[int], Treatment]]:
        if env.role(model) == "unlearned":
            self.fictional_control(model, env)
        return [(idx, Treatment(self.relearned(model, env, fold).model)) for idx, fold in self.groups(items, env)]

    def fictional_control(self, model: "HookedLM", env: AttackEnv) -> dict[str, Any]:
        """:func:`relearn_split_calibration` of ``model`` on the built-in fictional facts, recorded once per run as
        the detail ``fictional_control``."""

        def compute() -> dict[str, Any]:
            from unpact_mech.data.loaders import load_items

            fictional = load_items("builtin:fictional_facts")
            out = relearn_split_calibration(
                model, self, fictional, seed=env.seed, batch_size=env.batch_size, progress=env.progress
            )
            env.record(self.label, "fictional_control", pd.DataFrame([{"model": env.role(model), **out}]))
            return out

        return env.cached((self.label, "fictional_control"), compute)


def relearn_split_calibration(
    model: "HookedLM",
    attack: RelearnSplit,
    items: Sequence["QAItem"],
    *,
    seed: int,
    batch_size: int,
    progress: bool = False,
) -> dict[str, Any]:
    """The two-fold relearning of ``attack`` (its ``steps``, ``lr``, training ``batch_size``) on ``items`` (facts the
    model cannot know, e.g. the built-in fictional facts): for each fold f, a copy relearned on the gold answers of
    fold f answers the items of the other fold (greedy answer, ``contains`` judge; ``batch_size``: the evaluation's).

    Returns ``accuracy`` = the share of items answered correctly by the copy that never saw them, with its exact
    interval (``ci_low``, ``ci_high``, ``recovered`` of ``n``; :func:`unpact_mech.stats.rate`), and
    ``accuracy_before`` = the model's own accuracy on the items. The procedure "recovers" facts it could not have
    restored only as far as it teaches answers by itself, so ``accuracy`` ≈ 0 is what makes a ``relearn_split``
    recovery evidence of hidden knowledge."""
    from unpact_mech.scoring.evaluate import evaluate_items
    from unpact_mech.stats import rate

    folds = seeded_folds([it.id for it in items], N_FOLDS, seed)
    correct: dict[str, bool] = {}
    for fold in range(N_FOLDS):
        train = [it for it in items if folds[it.id] == fold]
        held_out = [it for it in items if folds[it.id] != fold]
        copy = relearn(
            model, train, steps=attack.steps, lr=attack.lr, batch_size=attack.batch_size, seed=seed,
            progress=progress, desc=f"{attack.label} (fictional control, fold {fold})",
        ).model  # fmt: skip
        if held_out:
            frame = evaluate_items(copy, held_out, batch_size=batch_size, progress=False)
            correct.update(zip(frame["item_id"], frame["correct"].astype(bool)))
        del copy
    before = evaluate_items(model, list(items), batch_size=batch_size, progress=False)
    r = rate([correct[it.id] for it in items])
    return {
        "accuracy": r.value, "ci_low": r.low, "ci_high": r.high, "recovered": r.k, "n": r.n,
        "accuracy_before": float(before["correct"].mean()) if len(before) else float("nan"),
        "steps": attack.steps, "lr": attack.lr,
    }  # fmt: skip


RELEARN_ATTACKS: tuple[ModelAttack, ...] = (RelearnUnrelated(), RelearnSplit())

__all__ = [
    "RELEARN_ATTACKS",
    "RelearnSplit",
    "RelearnUnrelated",
    "Relearned",
    "answer_nll",
    "check_training_options",
    "gold_targets",
    "relearn",
    "relearn_split_calibration",
    "seeded_folds",
]
