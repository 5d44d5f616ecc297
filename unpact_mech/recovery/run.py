"""The recovery experiment: apply every condition of the attack registry and ask again, with controls.

For an ORIGINAL and an UNLEARNED model (same tokenizer and architecture) and items with a forget / retain / utility
split:

1. keywords per item from one source (:mod:`unpact_mech.attacks.keywords`), aligned on the original prompt;
2. baselines: both models, no attack, every item -> the ELIGIBLE forget items (original right, unlearned wrong) and
   the destructive rates on the held-out utility items and on the retain (training) items;
3. one loop over the conditions (:class:`~unpact_mech.attacks.base.Attack` objects); each is evaluated in up to four
   arms, all through :meth:`Attack.treat` and :func:`~unpact_mech.scoring.evaluate.evaluate_items`:

   ====================  =========  =============================  =============================================
   arm                   model      items                          emphasised
   ====================  =========  =============================  =============================================
   ``emphasis``          unlearned  eligible forget items          the keywords
   ``random_control``    unlearned  eligible forget items          random non-keyword words (same word count) for
                                                                   prompt rewrites, random non-keyword question
                                                                   tokens (same TOKEN count) for activation edits;
                                                                   for conditions that use keywords, or that name
                                                                   their own matched control (:meth:`Attack.control`,
                                                                   e.g. a random direction of the same norm)
   ``forget_rest``       unlearned  the other forget items         the keywords (with ``emphasis``: the attacked
                                                                   accuracy on the whole forget set)
   ``original_control``  original   sample of every item           the keywords (skipped where meaningless)
   ``general_control``   unlearned  sample of utility items        the keywords (retain items when the data has
                                                                   no utility split)
   ====================  =========  =============================  =============================================

   -> one row of ``rates`` per condition (:func:`condition_row`): the recovery rate with its exact interval, the
   top-1/top-k shares, the LP gain, the share of the gap closed on the whole forget set (``gap_fraction``), the
   controls, and exact McNemar p-values against the random control
   (``p_vs_random``, Holm-adjusted over the conditions in ``p_vs_random_holm``) and against the neutral instruction
   (``p_vs_neutral``) on the same eligible items. Items are addressed by their id throughout; the columns of
   ``rates`` are the same whatever the data (missing values are NaN).

Everything is scored by :func:`~unpact_mech.scoring.evaluate.evaluate_items` (greedy answer + judge, teacher-forced
LP and rank), so "correct" means the same everywhere. Definitions: docs/concepts.md §9 and §13.

Speed without changing a number (``RecoveryConfig.prompt_cache``, default on; off = the reference it equals): the
arms of every prompt-only condition (kind ``strategy``) are evaluated together before the loop, one one-pass
evaluation per model (:meth:`_Evaluator.prompt_pass`, :mod:`~unpact_mech.scoring.prompt_cache`); and the original
model's arm of a condition that never reads the unlearned model (``Attack.original_arm_shared``) is scored once
per ``original_memo``, i.e. once for every unlearned model a session recovers from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from unpact_mech.attacks import DEFAULT_ATTACKS, Attack, AttackEnv, ItemKeywords, resolve_attacks, select_keywords
from unpact_mech.attacks.base import PROMPT_KIND, Treatment, memo_key
from unpact_mech.attacks.keywords import KEYWORD_SOURCES, keytoken_keywords
from unpact_mech.attribution.keytokens import DEFAULT_KEYTOKEN_ALPHA, DEFAULT_KEYTOKEN_BETA
from unpact_mech.data.splits import FORGET, RETAIN, UTILITY, split_items
from unpact_mech.distributed import evaluate_items_sharded, map_items
from unpact_mech.errors import InputError
from unpact_mech.recovery.controls import control_items, random_position_controls, random_word_controls
from unpact_mech.recovery.metrics import eligible_for_recovery
from unpact_mech.recovery.worst_case import top_condition, worst_case_by_family
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.scoring.evaluate import evaluate_items
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS
from unpact_mech.scoring.tokens import EncodedQA, encode_item, encode_items
from unpact_mech.stats import destructive_rate, holm, mcnemar_exact, rate
from unpact_mech.utils import float_or_none, one_or_many, progress_bar

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

BASELINE = "baseline"
#: The columns of ``rates`` (always present, NaN where a value does not apply).
RATE_COLUMNS = (
    "kind", "condition", "family", "is_control", "recovery_rate", "ci_low", "ci_high", "recovered", "n_eligible",
    "top1_before", "top1_after", "top5_before", "top5_after", "mean_logprob_gain",
    "random_control_rate", "random_control_ci_low", "random_control_ci_high", "p_vs_random", "p_vs_random_holm",
    "p_vs_neutral", "original_accuracy_before", "original_accuracy_after",
    "utility_accuracy_before", "utility_accuracy_after", "retain_accuracy_before", "retain_accuracy_after",
    "forget_accuracy_original", "forget_accuracy_unlearned", "forget_accuracy_after", "gap_fraction",
)  # fmt: skip


@dataclass
class RecoveryConfig:
    """What a recovery run does. ``attacks``: registered names, spec strings (``scale:factor=3``) or
    :class:`~unpact_mech.attacks.base.Attack` objects, run in this order (one string counts as one condition);
    ``templates``: prompt templates by strategy name; ``max_control_items``: cap (seeded sample) on the items of the
    original-model and general controls."""

    attacks: Sequence["str | Attack"] = DEFAULT_ATTACKS
    templates: dict[str, str] = field(default_factory=dict)
    keyword_source: str = "attribution"
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA
    controls: bool = True
    judge: str = "contains"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = EVAL_BATCH_SIZE
    top_k: int = 5
    seed: int = 0
    max_control_items: int | None = None
    #: Evaluate without interventions in one pass with each batch's shared prompt prefix computed once, and the
    #: prompt-only conditions (kind ``strategy``) of the run together in full batches
    #: (:meth:`_Evaluator.prompt_pass`). False: every arm apart, prompts computed twice — the reference it equals.
    prompt_cache: bool = True
    #: Under a multi-process ``accelerate launch`` (every process running this same recovery): each process evaluates
    #: its share of every evaluation's items and all get every row (:mod:`unpact_mech.distributed`), so eligibility,
    #: controls and statistics are those of one process. Keywords, attack set-up (fits, relearning, quantization) and
    #: read-outs run on every process. No effect on one process.
    shard: bool = False

    def __post_init__(self) -> None:  # attacks="focus" is the one condition focus
        self.attacks = one_or_many(self.attacks) or ()


@dataclass
class RecoveryResult:
    """``per_item``: one row per (model, condition, emphasis, item); ``rates``: one row per condition
    (:data:`RATE_COLUMNS`); ``keywords``: the emphasised words per item (table; ``item_keywords`` the objects, aligned
    with the items); ``summary``: headline numbers; ``eligible_ids``: forget items the original knows and the
    unlearned model does not; ``attacks``: the resolved conditions, in the order of ``rates``."""

    per_item: pd.DataFrame
    rates: pd.DataFrame
    keywords: pd.DataFrame
    summary: dict[str, Any]
    item_keywords: list[ItemKeywords] = field(default_factory=list)
    eligible_ids: list[str] = field(default_factory=list)
    attacks: list[Attack] = field(default_factory=list)
    plan: "RunPlan | None" = None
    details: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)


def recovered_lineage(
    unlearned: "HookedLM", attacks: Sequence[Attack], keyword_source: str, original: str
) -> list[dict[str, Any]]:
    """The unlearned model's lineage extended by the recovery step (no weight changes)."""
    return list(unlearned.lineage) + [{
        "role": "recovered", "weights_changed": False, "attacks": [a.label for a in attacks],
        "keyword_source": keyword_source, "original": str(original),
    }]  # fmt: skip


def check_compatible(original: "HookedLM", unlearned: "HookedLM") -> None:
    """Original and unlearned must share tokenizer and architecture (else positions and patching are meaningless)."""
    if original.arch.family != unlearned.arch.family or original.shape != unlearned.shape:
        raise InputError(
            f"original ({original.arch.family}, {original.shape.n_layers} layers, d={original.shape.d_model}) and "
            f"unlearned ({unlearned.arch.family}, {unlearned.shape.n_layers} layers, d={unlearned.shape.d_model}) "
            "models have different architectures"
        )
    if original.tokenizer.get_vocab() != unlearned.tokenizer.get_vocab():
        raise InputError("original and unlearned models have different tokenizers")


@dataclass(frozen=True)
class Arm:
    """One evaluation of a condition: ``role`` (which model), the item ids, the emphasis label, the words or
    positions emphasised per item, and the attack that acts (the condition's own, or its matched control)."""

    name: str
    role: str
    ids: list[str]
    emphasis: str
    words: dict[str, ItemKeywords]
    attack: Attack


@dataclass(frozen=True)
class Plan:
    """The items of one recovery run, by role: eligible forget items, the control samples and the general
    control's split (``utility``, or ``retain`` without utility items)."""

    eligible: list[str]
    forget_rest: list[str]
    original_control: list[str]
    general_control: list[str]
    general_split: str
    keywords: dict[str, ItemKeywords]
    random_words: dict[str, ItemKeywords]
    random_positions: dict[str, ItemKeywords]


@dataclass(frozen=True)
class RunPlan:
    """What a recovery run evaluates after its two baselines, known once they have run (``run_recovery(on_plan=)``,
    printed by ``unpact recover``): ``n_conditions`` conditions on ``n_eligible`` eligible forget items (of
    ``n_forget``), ``n_evaluations`` evaluations (one per arm with items: emphasis, and with ``controls`` the random,
    original-model and general controls) of ``n_answers`` item answers (greedy answer + teacher-forced LP) in all;
    ``keyword_items``: items whose keywords word-level occlusion computes after the plan (0: given, or the data's).

    The estimate rests on one measurement, the two baselines (``baseline_answers`` answers in ``baseline_seconds``):
    their time per answer times the plan's answers, each weighted by its attack's
    :attr:`~unpact_mech.attacks.base.Attack.cost` (``weighted_answers``; 2 for ``patch``, which runs the original as
    well). Rough: the keyword occlusion is not included, and small batches cost more per answer than full ones
    (measured on a shared 2-core machine: 118 s for an estimated 145 s on SmolLM2-135M, 3 conditions with controls, 24
    items; the tiny model, dominated by per-batch overhead, takes about twice its estimate of a second or two)."""

    n_conditions: int
    n_eligible: int
    n_forget: int
    controls: bool
    n_evaluations: int
    n_answers: int
    weighted_answers: float
    baseline_answers: int
    baseline_seconds: float
    keyword_items: int = 0

    @property
    def seconds_per_answer(self) -> float:
        return self.baseline_seconds / max(self.baseline_answers, 1)

    @property
    def estimated_seconds(self) -> float:
        """Rough wall time of the conditions: the baselines' time per answer x the plan's cost-weighted answers."""
        return self.seconds_per_answer * self.weighted_answers

    def describe(self) -> str:
        """One line: conditions x items x controls -> evaluations and answers."""
        controls = "with controls" if self.controls else "no controls"
        line = (
            f"plan: {self.n_conditions} conditions x {self.n_eligible} eligible forget items (of {self.n_forget}), "
            f"{controls}: {self.n_evaluations} evaluations, {self.n_answers} answers"
        )
        if self.keyword_items:
            line += f"; first word-level occlusion of {self.keyword_items} items on the original for the keywords"
        return line

    def estimate(self, extra: Mapping[str, float] | None = None) -> str:
        """One line: the estimate and the measurement it rests on; ``extra``: further work (label -> its cost-weighted
        answers), estimated the same way (e.g. ``unpact recover --ablation``'s layer sweep)."""
        parts = [f"{duration(self.estimated_seconds)} for the conditions"]
        parts += [f"{duration(self.seconds_per_answer * n)} for {label}" for label, n in (extra or {}).items()]
        return (
            f"estimate: about {' + '.join(parts)} (from the baselines: {self.baseline_answers} answers in "
            f"{duration(self.baseline_seconds)})"
        )


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _detail_sizes(env: AttackEnv) -> dict[tuple[str, str], int]:
    """How many rows each detail table of ``env`` has now."""
    return {k: len(t) for k, t in env.details.items()}


def _details_since(env: AttackEnv, before: dict[tuple[str, str], int]) -> dict[tuple[str, str], pd.DataFrame]:
    """The detail rows recorded since :func:`_detail_sizes` gave ``before``."""
    return {k: t.iloc[before.get(k, 0) :] for k, t in env.details.items() if len(t) > before.get(k, 0)}


class _Evaluator:
    """Evaluates (model, items, treatment) and keeps every labelled per-item frame."""

    def __init__(self, models: dict[str, "HookedLM"], items: dict[str, "QAItem"], cfg: RecoveryConfig) -> None:
        self.models, self.items, self.cfg = models, items, cfg
        self.frames: list[pd.DataFrame] = []
        #: evaluate_items, or its sharded form (each process of a launch on its share, all get every row)
        self.evaluate_items = evaluate_items_sharded if cfg.shard else evaluate_items

    def run(self, arm: Arm, condition: Attack, env: AttackEnv, done: pd.DataFrame | None = None) -> pd.DataFrame | None:
        """Evaluate ``arm`` (its attack acts; rows are labelled with ``condition``); None when it has no items.
        ``done``: its rows, already evaluated (:meth:`prompt_pass`)."""
        if not arm.ids:
            return None
        if done is None:
            done = self.shared_original_arm(arm, env) if self.shares(arm) else self.evaluate_arm(arm, env)
        return self.keep(
            done, role=arm.role, kind=condition.kind, condition=condition.label, emphasis=arm.emphasis, arm=arm.name
        )

    @staticmethod
    def shares(arm: Arm) -> bool:
        """Whether ``arm`` is the original model's and its attack's original arm is shared between runs."""
        return arm.role == "original" and arm.attack.original_arm_shared

    def evaluate_arm(self, arm: Arm, env: AttackEnv) -> pd.DataFrame:
        """The arm's items under its attack, one evaluation per treatment group, rows in the arm's item order."""
        items = [self.items[i] for i in arm.ids]
        groups = arm.attack.treat_groups(self.models[arm.role], items, [arm.words[i] for i in arm.ids], env)
        parts = [self.evaluate([items[i] for i in idx], treated) for idx, treated in groups if idx]
        return self.in_order(parts, arm)

    @staticmethod
    def in_order(parts: Sequence[pd.DataFrame], arm: Arm) -> pd.DataFrame:
        return pd.concat(parts, ignore_index=True).set_index("item_id").loc[arm.ids].reset_index()

    def shared_key(self, arm: Arm, env: AttackEnv) -> tuple[int, Any]:
        """The ``original_memo`` key of a shared original arm: everything its rows depend on (the attack with its
        options, the arm, its items and their emphasis, the judge and answer length, the fit / utility ids and the
        seed)."""
        return memo_key(env.original, ("original_arm", repr((
            arm.attack, arm.name, [self.items[i] for i in arm.ids], [arm.words[i] for i in arm.ids],
            self.cfg.judge, self.cfg.max_new_tokens, env.fit_ids, env.utility_ids, env.seed,
        ))))  # fmt: skip

    def shared_original_arm(self, arm: Arm, env: AttackEnv) -> pd.DataFrame:
        """:meth:`evaluate_arm` of an original-model arm whose attack is ``original_arm_shared``, once per
        ``env.original_memo`` (:meth:`shared_key`): a later run that shares the memo — another unlearned model
        against the same original — reuses the rows, and the detail tables the attack recorded for the original
        are recorded again in that run."""
        key, stored = self.shared_rows(arm, env)
        if stored is not None:
            return stored
        before = _detail_sizes(env)
        df = self.evaluate_arm(arm, env)
        env.original_memo[key] = (df, _details_since(env, before))
        return df

    def shared_rows(self, arm: Arm, env: AttackEnv) -> tuple[tuple[int, Any] | None, pd.DataFrame | None]:
        """``(key, rows)``: the arm's ``original_memo`` key (None unless :meth:`shares`) and, when the memo has it,
        its stored rows (details recorded again in this run, :meth:`replay`); else None."""
        if not self.shares(arm):
            return None, None
        key = self.shared_key(arm, env)
        return key, self.replay(env.original_memo[key], env) if key in env.original_memo else None

    @staticmethod
    def replay(stored: tuple[pd.DataFrame, dict[tuple[str, str], pd.DataFrame]], env: AttackEnv) -> pd.DataFrame:
        """A shared original arm's rows, its detail tables recorded again in this run."""
        df, added = stored
        for (condition, name), table in added.items():
            env.record(condition, name, table)
        return df

    def prompt_pass(self, arms_: Sequence[Arm], env: AttackEnv) -> list[pd.DataFrame | None]:
        """The rows of arms whose every treatment only changes the prompt (the model itself, no intervention, no
        read-out — prompt strategies, rephrasings, few-shot turns), evaluated TOGETHER: one
        :func:`~unpact_mech.scoring.evaluate.evaluate_items` call per model over all their items, so batches are full
        and each batch's shared prompt prefix is computed once (instead of one call per condition and arm, each a
        few dozen items). Aligned with ``arms_`` (None: no items); an arm whose treatment does more is evaluated on
        its own, a shared original arm already in the memo is taken from there."""
        out: list[pd.DataFrame | None] = [None] * len(arms_)
        pending: dict[str, list[tuple[int, list["QAItem"], list[EncodedQA]]]] = {}
        to_store: dict[int, tuple[tuple[int, Any], dict[tuple[str, str], pd.DataFrame]]] = {}
        for j, arm in enumerate(arms_):
            if not arm.ids:
                continue
            key, stored = self.shared_rows(arm, env)
            if stored is not None:
                out[j] = stored
                continue
            before = _detail_sizes(env)
            model, items = self.models[arm.role], [self.items[i] for i in arm.ids]
            groups = arm.attack.treat_groups(model, items, [arm.words[i] for i in arm.ids], env)
            if not all(t.model is model and t.interventions is None and t.readout is None for _, t in groups):
                out[j] = self.in_order([self.evaluate([items[i] for i in idx], t) for idx, t in groups if idx], arm)
            else:
                for idx, treated in groups:
                    sub = [items[i] for i in idx]
                    pending.setdefault(arm.role, []).append((j, sub, self.encoded(model, sub, treated)))
            if key is not None:
                to_store[j] = (key, _details_since(env, before))
        parts: dict[int, list[pd.DataFrame]] = {}
        for role, jobs in pending.items():
            every = self.evaluate_items(
                self.models[role], [it for _, sub, _ in jobs for it in sub],
                encoded=[e for _, _, enc in jobs for e in enc], judge=self.cfg.judge,
                max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size, progress=False,
                prompt_cache=self.cfg.prompt_cache,
            )  # fmt: skip
            start = 0
            for j, sub, _ in jobs:
                parts.setdefault(j, []).append(every.iloc[start : start + len(sub)])
                start += len(sub)
        for j, frames in parts.items():
            out[j] = self.in_order(frames, arms_[j])
        for j, (key, added) in to_store.items():
            env.original_memo[key] = (out[j], added)
        return out

    @staticmethod
    def encoded(model: "HookedLM", items: list["QAItem"], treated: Treatment) -> list[EncodedQA]:
        """The prompts a prompt-only treatment asks: its own encoded prompts, its rewritten questions, or the
        items' own questions."""
        if treated.encoded is not None:
            return list(treated.encoded)
        if treated.questions is not None:
            return [encode_item(model, it, question=q) for it, q in zip(items, treated.questions)]
        return encode_items(model, items)

    def evaluate(self, items: list["QAItem"], treated: Treatment) -> pd.DataFrame:
        """``items`` under one treatment: its read-out, or the greedy answer + teacher-forced scores."""
        if treated.readout is not None:
            return treated.readout(treated.model, items)
        return self.evaluate_items(
            treated.model, items, encoded=self.encoded(treated.model, items, treated), judge=self.cfg.judge,
            max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size,
            interventions=treated.interventions, progress=False,
            prompt_cache=self.cfg.prompt_cache,
        )  # fmt: skip

    def baseline(self, role: str, ids: list[str], known: pd.DataFrame | None = None) -> pd.DataFrame:
        """The model's answers without any attack (``known``: an evaluation of these items to reuse)."""
        if known is None:
            items = [self.items[i] for i in ids]
            known = self.evaluate_items(
                self.models[role], items, judge=self.cfg.judge, max_new_tokens=self.cfg.max_new_tokens,
                batch_size=self.cfg.batch_size, progress=False, prompt_cache=self.cfg.prompt_cache,
            )  # fmt: skip
        else:
            have = set(known["item_id"])
            missing = [i for i in ids if i not in have]
            if missing:
                raise ValueError(f"original_baseline lacks item {missing[0]!r}")
            known = known.set_index("item_id").loc[ids].reset_index()
        return self.keep(known, role=role, kind=BASELINE, condition="none", emphasis="none", arm=BASELINE).set_index(
            "item_id"
        )

    def keep(self, df: pd.DataFrame, *, role: str, kind: str, condition: str, emphasis: str, arm: str) -> pd.DataFrame:
        df = df.copy()
        for col, default in (("generation", ""), ("truncated", float("nan"))):  # read-outs generate nothing
            if col not in df:
                df[col] = default
        labels = (("model", role), ("kind", kind), ("condition", condition), ("emphasis", emphasis), ("arm", arm))
        for pos, (col, value) in enumerate(labels, start=2):
            df.insert(pos, col, value)
        self.frames.append(df)
        return df


def arms(attack: Attack, cfg: RecoveryConfig, plan: Plan) -> list[Arm]:
    """The arms of one condition (see the module docstring), in the order they are evaluated."""
    out = [Arm("emphasis", "unlearned", plan.eligible, "keywords", plan.keywords, attack),
           Arm("forget_rest", "unlearned", plan.forget_rest, "keywords", plan.keywords, attack)]  # fmt: skip
    if cfg.controls:
        control = attack.control()
        if control is not None:
            if attack.uses_keywords:
                random = plan.random_positions if attack.control_unit == "positions" else plan.random_words
                out.append(Arm("random_control", "unlearned", plan.eligible, "random", random, control))
            else:
                out.append(Arm("random_control", "unlearned", plan.eligible, control.label, plan.keywords, control))
        if attack.runs_on_original:
            out.append(Arm("original_control", "original", plan.original_control, "keywords", plan.keywords, attack))
        out.append(Arm("general_control", "unlearned", plan.general_control, "keywords", plan.keywords, attack))
    return out


def _outcomes(frame: pd.DataFrame | None, ids: list[str]) -> np.ndarray:
    """Correctness of ``ids`` (in that order) in an arm's frame; empty when the arm did not run."""
    if frame is None or not len(frame):
        return np.zeros(0, dtype=bool)
    return frame.set_index("item_id").loc[ids, "correct"].to_numpy(bool)


def condition_row(
    attack: Attack, frames: dict[str, pd.DataFrame | None], plan: Plan, base_o: pd.DataFrame, base_u: pd.DataFrame,
    cfg: RecoveryConfig,
) -> dict[str, Any]:  # fmt: skip
    """One ``rates`` row: recovery rate R on the eligible items with its exact interval, top-1/top-k of the gold
    first token before and after, mean LP gain, the random control with its interval and the exact McNemar p-value
    against it (paired on the same eligible items), the original-model and general controls (accuracy before ->
    after on the same items), and on the whole forget set the accuracies of the original, the unlearned model and
    the unlearned model under the attack, with ``gap_fraction`` = (after − unlearned) / (original − unlearned)
    (NaN when the original is no better than the unlearned model)."""
    eligible = plan.eligible
    row: dict[str, Any] = {"kind": attack.kind, "condition": attack.label, "family": attack.family,
                           "is_control": attack.is_control}  # fmt: skip
    emph = frames.get("emphasis")
    e = emph.set_index("item_id").loc[eligible] if emph is not None else base_u.iloc[:0]
    r = rate(e["correct"].to_numpy(bool))
    row |= {"recovery_rate": r.value, "ci_low": r.low, "ci_high": r.high, "recovered": r.k, "n_eligible": r.n}
    before = base_u.loc[eligible] if eligible else base_u.iloc[:0]
    for k, name in ((1, "top1"), (cfg.top_k, f"top{cfg.top_k}")):
        row[f"{name}_before"] = float((before["rank"] < k).mean()) if len(before) else float("nan")
        row[f"{name}_after"] = float((e["rank"] < k).mean()) if len(e) else float("nan")
    gain = e["logprob"].to_numpy() - before["logprob"].to_numpy()
    row["mean_logprob_gain"] = float(gain.mean()) if len(e) else float("nan")
    rand = frames.get("random_control")
    if rand is not None and len(rand):
        row |= rate(rand["correct"].to_numpy(bool)).as_dict("random_control_rate")
        row.pop("random_control_rate_k"), row.pop("random_control_rate_n")
        row["random_control_ci_low"] = row.pop("random_control_rate_ci_low")
        row["random_control_ci_high"] = row.pop("random_control_rate_ci_high")
        row["p_vs_random"] = mcnemar_exact(_outcomes(emph, eligible), _outcomes(rand, eligible))
    forget = plan.eligible + plan.forget_rest
    attacked = [f for f in (emph, frames.get("forget_rest")) if f is not None and len(f)]
    if forget and attacked:
        after = float(pd.concat(attacked)["correct"].mean())
        acc_o, acc_u = float(base_o.loc[forget, "correct"].mean()), float(base_u.loc[forget, "correct"].mean())
        row |= {"forget_accuracy_original": acc_o, "forget_accuracy_unlearned": acc_u, "forget_accuracy_after": after,
                "gap_fraction": (after - acc_u) / (acc_o - acc_u) if acc_o > acc_u else float("nan")}  # fmt: skip
    controls = (("original_control", base_o, "original"), ("general_control", base_u, plan.general_split))
    for arm, base, prefix in controls:
        frame = frames.get(arm)
        if frame is not None and len(frame):  # before/after on the same (possibly sampled) items
            row[f"{prefix}_accuracy_before"] = float(base.loc[list(frame["item_id"]), "correct"].mean())
            row[f"{prefix}_accuracy_after"] = float(frame["correct"].mean())
    return row


def _item_keywords(
    cfg: RecoveryConfig, original: "HookedLM", items: Sequence["QAItem"], encoded,
    keywords: Sequence[ItemKeywords] | None,
) -> list[ItemKeywords]:  # fmt: skip
    if keywords is None:
        attribution = None
        if cfg.shard and cfg.keyword_source in ("attribution", "both"):  # the occlusion: each process on its share
            attribution = map_items(
                lambda share, enc: keytoken_keywords(
                    original, share, enc, keytoken_alpha=cfg.keytoken_alpha, keytoken_beta=cfg.keytoken_beta,
                    batch_size=cfg.batch_size,
                ), items, encoded,
            )  # fmt: skip
        return select_keywords(
            cfg.keyword_source, original, items, encoded, keytoken_alpha=cfg.keytoken_alpha,
            keytoken_beta=cfg.keytoken_beta, batch_size=cfg.batch_size, attribution=attribution,
        )  # fmt: skip
    if [k.item_id for k in keywords] != [it.id for it in items]:
        raise ValueError("precomputed keywords must be aligned with the items")
    return list(keywords)


def run_recovery(
    original: "HookedLM",
    unlearned: "HookedLM",
    items: Sequence["QAItem"],
    config: RecoveryConfig | None = None,
    *,
    keywords: Sequence[ItemKeywords] | None = None,
    original_baseline: pd.DataFrame | None = None,
    progress: bool = True,
    on_plan: Callable[[RunPlan], None] | None = None,
    original_memo: dict[Any, Any] | None = None,
) -> RecoveryResult:
    """Run every condition of ``config.attacks`` with controls; see the module docstring.

    ``keywords``: precomputed keywords aligned with ``items`` (e.g. KeyTokens computed once for several unlearned
    models); default: from ``config.keyword_source``. ``original_baseline``: the original model's
    :func:`~unpact_mech.scoring.evaluate.evaluate_items` frame of these items with the same judge and answer length
    (reused instead of evaluating the original again). ``on_plan``: called with the :class:`RunPlan` once the two
    baselines have run, before the keywords' occlusion and the conditions (``unpact recover`` prints it).
    ``original_memo``: a dict shared by several runs with the same ``original`` (and data), in which conditions keep
    what they compute for the original model (:meth:`~unpact_mech.attacks.base.AttackEnv.cached_for`)."""
    cfg = config or RecoveryConfig()
    check_compatible(original, unlearned)
    attacks = resolve_attacks(cfg.attacks, unlearned, cfg.templates)
    split = {name: [it.id for it in split_items(items, name)] for name in (FORGET, RETAIN, UTILITY)}
    if not split[FORGET]:
        raise InputError("recovery needs items with split 'forget'")
    if keywords is None and cfg.keyword_source not in KEYWORD_SOURCES:
        raise InputError(f"unknown keyword source {cfg.keyword_source!r}; choose from: {', '.join(KEYWORD_SOURCES)}")
    encoded = [encode_item(original, it) for it in items]
    # cheap keywords (given, or the data's) now, so their errors come before any evaluation; occlusion after the plan
    cheap = keywords is not None or cfg.keyword_source == "data"
    kw_list = _item_keywords(cfg, original, items, encoded, keywords) if cheap else None
    everything = split[FORGET] + split[RETAIN] + split[UTILITY]
    general_split = UTILITY if split[UTILITY] else RETAIN
    original_control, general_control = control_items(
        everything, split[general_split], [it.id for it in items], cfg.max_control_items, cfg.seed
    )
    evaluator = _Evaluator({"original": original, "unlearned": unlearned}, {it.id: it for it in items}, cfg)

    bar = progress_bar(total=2 + len(attacks), desc="recovery", enabled=progress)
    t0 = time.perf_counter()
    base_o = evaluator.baseline("original", everything, original_baseline)
    bar.update()
    base_u = evaluator.baseline("unlearned", everything)
    bar.update()
    baseline_seconds = time.perf_counter() - t0
    forget = split[FORGET]
    mask = eligible_for_recovery(base_o.loc[forget, "correct"].to_numpy(), base_u.loc[forget, "correct"].to_numpy())
    eligible = [i for i, ok in zip(forget, mask) if ok]
    forget_rest = [i for i in forget if i not in set(eligible)]
    runs = 1 if original_baseline is not None else 2  # baseline evaluations measured
    run_plan = _run_plan(
        attacks, cfg, Plan(eligible, forget_rest, original_control, general_control, general_split, {}, {}, {}),
        len(forget),
        baseline_answers=len(everything) * runs,
        baseline_seconds=baseline_seconds, keyword_items=0 if cheap else len(items),
    )  # fmt: skip
    if on_plan is not None:
        on_plan(run_plan)
    if kw_list is None:
        kw_list = _item_keywords(cfg, original, items, encoded, keywords)
    words = random_word_controls(encoded, kw_list, cfg.seed)
    positions = random_position_controls(encoded, kw_list, cfg.seed)
    ids = [it.id for it in items]
    plan = Plan(
        eligible, forget_rest, original_control, general_control, general_split,
        {k.item_id: k for k in kw_list}, dict(zip(ids, words)), dict(zip(ids, positions)),
    )  # fmt: skip
    env = AttackEnv(
        original, unlearned, {e.item_id: e for e in encoded}, plan.keywords, tuple(forget), cfg.batch_size,
        items=evaluator.items, utility_ids=tuple(split[UTILITY]), seed=cfg.seed, progress=progress,
        original_memo=original_memo if original_memo is not None else {},
    )  # fmt: skip

    rate_rows, emphasis_outcomes = [], {}
    done: dict[tuple[int, str], pd.DataFrame | None] = {}
    if cfg.prompt_cache:  # the prompt-only conditions first, together (rows are labelled in run order below)
        bar.set_postfix_str("prompt conditions, batched together")
        jobs = [(n, arm) for n, a in enumerate(attacks) if a.kind == PROMPT_KIND for arm in arms(a, cfg, plan)]
        done = {(n, arm.name): df for (n, arm), df in zip(jobs, evaluator.prompt_pass([a for _, a in jobs], env))}
    for n, attack in enumerate(attacks):
        bar.set_postfix_str(attack.label)
        frames = {
            arm.name: evaluator.run(arm, attack, env, done.pop((n, arm.name), None)) for arm in arms(attack, cfg, plan)
        }
        env.memo.clear()  # a condition's transformed models and fits are its own: free them (the original's stay)
        rate_rows.append(condition_row(attack, frames, plan, base_o, base_u, cfg))
        emphasis_outcomes[attack.label] = _outcomes(frames.get("emphasis"), plan.eligible)
        bar.update()
    bar.close()
    rates = _paired_tests(pd.DataFrame(rate_rows), attacks, emphasis_outcomes)

    kw_table = pd.DataFrame([
        {"item_id": it.id, "split": it.split, "source": k.source, "keywords": " | ".join(k.words),
         "positions": " ".join(map(str, k.positions)), "random_words": " | ".join(w.words),
         "random_positions": " ".join(map(str, p.positions))}
        for it, k, w, p in zip(items, kw_list, words, positions)
    ])  # fmt: skip
    summary = _summary(cfg, split, plan, base_o, base_u, rates)
    return RecoveryResult(
        pd.concat(evaluator.frames, ignore_index=True), rates, kw_table, summary, kw_list, plan.eligible, attacks,
        run_plan, dict(env.details),
    )  # fmt: skip


def _run_plan(attacks: Sequence[Attack], cfg: RecoveryConfig, plan: Plan, n_forget: int, **measured: Any) -> RunPlan:
    """The :class:`RunPlan`: the arms every condition will evaluate (:func:`arms`; an arm without items is not run)."""
    sizes = [(len(arm.ids), attack.cost) for attack in attacks for arm in arms(attack, cfg, plan) if arm.ids]
    return RunPlan(
        len(attacks), len(plan.eligible), n_forget, cfg.controls, len(sizes), sum(n for n, _ in sizes),
        sum(n * cost for n, cost in sizes), **measured,
    )  # fmt: skip


def _paired_tests(rates: pd.DataFrame, attacks: Sequence[Attack], outcomes: dict[str, np.ndarray]) -> pd.DataFrame:
    """``p_vs_neutral`` (exact McNemar against the first control condition's emphasis arm on the same eligible
    items), ``p_vs_random_holm`` (Holm over the conditions), and the fixed column order."""
    rates = rates.reindex(columns=[*RATE_COLUMNS, *[c for c in rates.columns if c not in RATE_COLUMNS]])
    control = next((a.label for a in attacks if a.is_control), None)
    if control is not None and len(outcomes[control]):
        rates["p_vs_neutral"] = [
            float("nan") if label == control or not len(outcomes[label])
            else mcnemar_exact(outcomes[label], outcomes[control])
            for label in rates["condition"]
        ]  # fmt: skip
    rates["p_vs_random_holm"] = holm(rates["p_vs_random"].astype(float).tolist())
    return rates


def _summary(
    cfg: RecoveryConfig, split: dict[str, list[str]], plan: Plan, base_o: pd.DataFrame, base_u: pd.DataFrame,
    rates: pd.DataFrame,
) -> dict[str, Any]:  # fmt: skip
    """Headline numbers: counts, baseline accuracies per split, destructive rates (utility: held out; retain: the
    training anchor), the rate per condition and the best of the K conditions with its Holm-adjusted p-value."""
    summary: dict[str, Any] = {f"n_{name}": len(ids) for name, ids in split.items()}
    summary["n_eligible"] = len(plan.eligible)
    summary["keyword_source"] = cfg.keyword_source
    for name, ids in split.items():
        o, u = base_o.loc[ids, "correct"].to_numpy(bool), base_u.loc[ids, "correct"].to_numpy(bool)
        summary[f"original_{name}_accuracy"] = float(o.mean()) if len(ids) else None
        summary[f"unlearned_{name}_accuracy"] = float(u.mean()) if len(ids) else None
        if name != FORGET:
            d = destructive_rate(o, u)
            summary |= {f"{name}_destructive_rate": d.value if d.n else None,
                        f"{name}_destructive_rate_ci_low": d.low if d.n else None,
                        f"{name}_destructive_rate_ci_high": d.high if d.n else None,
                        f"{name}_destructive_rate_k": d.k, f"{name}_destructive_rate_n": d.n}  # fmt: skip
    if not split[UTILITY]:
        summary["utility_note"] = "no utility items: collateral damage is measured on retain items only"
    if not plan.eligible:
        summary["eligible_note"] = (
            f"0 eligible forget items: the unlearned model still answers all {len(split[FORGET])} forget items the "
            "original answers"
        )
    summary["recovery_rate"] = {r.condition: float_or_none(r.recovery_rate) for r in rates.itertuples()}
    summary["random_control_rate"] = {r.condition: float_or_none(r.random_control_rate) for r in rates.itertuples()}
    summary["worst_case_by_family"] = worst_case_by_family(rates)
    best = top_condition(rates)
    summary["best_of"] = best["of"]
    summary["best_condition"] = best["condition"]
    summary["best_recovery_rate"] = best.get("rate")
    summary["best_p_vs_random_holm"] = best.get("p_holm")
    return summary
