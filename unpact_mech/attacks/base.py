"""Recovery conditions ("attacks"): what they are and the one way each acts.

An attack is a small frozen object with a ``name``, a ``family`` (``prompt_emphasis``, ``activation_emphasis``;
weight-level and probe families plug in the same way), whether it ``uses_keywords``, whether it is a control, and
EXACTLY ONE way to act on an evaluation, given by its class:

=====================  ==============  ==========================================================================
class                  ``kind``        the one way it acts
=====================  ==============  ==========================================================================
:class:`PromptAttack`  ``strategy``    rewrites the question: ``rewrite(question, keywords) -> question``
:class:`ActivationAttack` ``intervention`` edits activations at the emphasised prompt positions, during
                                       teacher-forced scoring and on every greedy step:
                                       ``interventions(positions, env) -> InterventionFactory``
:class:`ModelAttack`   ``transform``   asks a transformed model (weights changed): ``transform(model, env) -> model``
:class:`ReadoutAttack` ``readout``     reads the answer out of the model's internals instead of asking it (e.g. the
                                       logit lens): ``readout(model, items, env) -> frame`` of ``correct``/``rank``
=====================  ==============  ==========================================================================

Attacks that are fitted on data or train a model per fold split the items with :meth:`Attack.treat_groups`, so a
scored item never contributes to the direction or the relearning that scores it; :meth:`Attack.control` names the
condition of the matched ``random_control`` arm.

The recovery runner treats every attack alike through :meth:`Attack.treat`, which turns (model, items, emphasised
keywords) into a :class:`Treatment` — the model to ask, the rewritten questions or None, the interventions or None —
so a new attack needs no change to the runner. Options are dataclass fields; ``attack.configure(factor=3)`` returns a
configured copy and ``attack.resolve(model)`` fills model-dependent defaults (e.g. layers) and validates them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from unpact_mech.errors import InputError
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    import pandas as pd

    from unpact_mech.attacks.keywords import ItemKeywords
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.batching import InterventionFactory
    from unpact_mech.scoring.tokens import EncodedQA

#: Per-item emphasised prompt positions, aligned with the evaluated items.
Positions = Sequence[Sequence[int]]
#: The kind of the conditions that only change the prompt (rewrites, rephrasings, few-shot turns).
PROMPT_KIND = "strategy"
#: What a kind of attack is called in messages.
KIND_NOUNS = {
    "strategy": "prompt strategy", "intervention": "intervention", "transform": "model transform",
    "readout": "latent read-out",
}  # fmt: skip


def memo_key(model: "HookedLM", key: Any) -> tuple[int, Any]:
    """The key under which :meth:`AttackEnv.cached_for` keeps what ``key`` computed for ``model`` (in ``memo``, or in
    ``original_memo`` for the original), and under which a model transform keeps ``model``'s copy in ``memo`` for
    the length of one condition."""
    return (id(model), key)


@dataclass(frozen=True)
class AttackEnv:
    """What an attack may read besides the model it acts on.

    ``original``: the model before unlearning (donor of ``patch``); ``unlearned``: the unlearned model (None outside
    recovery, e.g. when ``keyguard`` trains against an attack); ``encoded`` / ``keywords``: the original prompts and
    emphasised keywords by item id; ``fit_ids``: the items a data-fitted attack may estimate from (the forget items);
    ``items``: every item of the run by id; ``utility_ids``: the held-out utility items (e.g. the shots of
    ``few_shot``); ``seed``: the run's seed; ``progress``: whether slow attacks may show a progress bar; ``memo``: a
    per-run cache for quantities an attack computes once (directions, transformed models); ``details``: tables an
    attack reports beside its rates (``record``), written by the runner as ``details/<condition>.<name>.csv``.
    """

    original: "HookedLM"
    unlearned: "HookedLM | None" = None
    encoded: Mapping[str, "EncodedQA"] = field(default_factory=dict)
    keywords: Mapping[str, "ItemKeywords"] = field(default_factory=dict)
    fit_ids: tuple[str, ...] = ()
    batch_size: int = EVAL_BATCH_SIZE
    items: Mapping[str, "QAItem"] = field(default_factory=dict)
    utility_ids: tuple[str, ...] = ()
    seed: int = 0
    progress: bool = False
    memo: dict[Any, Any] = field(default_factory=dict, compare=False)
    original_memo: dict[Any, Any] = field(default_factory=dict, compare=False)
    details: dict[tuple[str, str], "pd.DataFrame"] = field(default_factory=dict, compare=False)

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` for the lifetime of this environment."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def cached_for(self, model: "HookedLM", key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (``model``, ``key``): for the original model once per ``original_memo`` — which a
        caller may share between the recovery runs of several unlearned models (``run_recovery(original_memo=)``),
        so e.g. the original's own answers (the logit lens) and its scored arms (:attr:`Attack.original_arm_shared`)
        are computed once for all of them —, for any other model once per condition (``memo`` is cleared after
        each). Keep whole models out of ``original_memo``: it lives as long as the session."""
        store = self.original_memo if model is self.original else self.memo  # the original outlives the runs
        full = memo_key(model, key)
        if full not in store:
            store[full] = compute()
        return store[full]

    def record(self, condition: str, name: str, table: "pd.DataFrame") -> None:
        """Keep ``table`` as the detail ``name`` of ``condition`` (a later record of the same pair appends rows)."""
        import pandas as pd

        key = (condition, name)
        self.details[key] = pd.concat([self.details[key], table], ignore_index=True) if key in self.details else table

    def role(self, model: "HookedLM") -> str:
        """``original``, ``unlearned`` or ``other``: which model of the environment ``model`` is."""
        if model is self.original:
            return "original"
        return "unlearned" if model is self.unlearned else "other"


@dataclass(frozen=True)
class Treatment:
    """How to evaluate items under an attack: ask ``model`` the ``questions`` (None = the items' own) with the
    ``interventions`` active (None = none). ``encoded``: the attack's own encoded prompts, aligned with the items
    (e.g. few-shot turns before the question; overrides ``questions``). ``readout``: a scorer that replaces the
    greedy answer + teacher-forced scoring, ``readout(model, items) -> frame`` with at least the columns ``item_id``,
    ``correct``, ``logprob``, ``rank`` (latent read-outs such as the logit lens)."""

    model: "HookedLM"
    questions: list[str] | None = None
    interventions: "InterventionFactory | None" = None
    encoded: "list[EncodedQA] | None" = None
    readout: "Callable[[HookedLM, Sequence[QAItem]], pd.DataFrame] | None" = None


@dataclass(frozen=True)
class Attack:
    """Base of every recovery condition (see the module docstring). Subclasses set ``kind`` and ``options``."""

    name: str
    description: str = ""
    family: str = ""
    uses_keywords: bool = True
    is_control: bool = False
    #: Whether the control "the same attack on the original model" is informative (False for ``patch``, which
    #: patches the original with itself).
    runs_on_original: bool = True

    #: Rough cost of one answer under the attack, in plain answers (a plan's time estimate; 2 when every forward
    #: also runs another model, as ``patch`` runs the original).
    cost: ClassVar[float] = 1.0
    #: Whether what the attack does to the ORIGINAL model depends on the original, the items and their emphasis
    #: only — never on the unlearned model (prompt rewrites, quantization, relearning on fixed data, read-outs of the
    #: original). Then the original model's arm is scored once per ``original_memo`` and reused by every recovery
    #: run that shares it (``experiments/is_it_gone.py`` runs many unlearned models against one original). False
    #: for edits fitted on the unlearned model (``steer``, ``ablate_direction``) and by default.
    original_arm_shared: ClassVar[bool] = False

    kind: ClassVar[str] = ""
    #: The fields a user may set with :meth:`configure` or a spec string ``name:key=value,...``.
    options: ClassVar[tuple[str, ...]] = ()
    #: What the random control of an attack that uses keywords draws: ``words`` (as many random non-keyword words
    #: as keywords — prompt rewrites act on words) or ``positions`` (as many random non-keyword question TOKENS as
    #: keyword tokens — activation edits act on positions).
    control_unit: ClassVar[str] = "words"

    @property
    def label(self) -> str:
        """The condition's name in result tables (the name plus its parameters where it has any)."""
        return self.name

    def settings(self) -> dict[str, Any]:
        """Every field of the condition (its class, then each dataclass field but the description; a function by its
        qualified name) as JSON values — what ``run.json`` records beside the label, so a later run can tell whether
        an earlier one asked the same condition: a label names only the options that differ from their defaults,
        and a default may change between versions."""
        import json

        out: dict[str, Any] = {"class": f"{type(self).__module__}.{type(self).__qualname__}"}
        for f in dataclasses.fields(self):
            if f.name != "description":
                value = getattr(self, f.name)
                out[f.name] = getattr(value, "__qualname__", str(value)) if callable(value) else value
        return json.loads(json.dumps(out, default=str))

    def configure(self, **options: Any) -> "Attack":
        """A copy with ``options`` set; an option the attack does not take is an :class:`InputError`."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise InputError(f"{self.kind_noun} {self.name!r}: unknown option {unknown[0]!r} (it takes: {valid})")
        return dataclasses.replace(self, **options) if options else self

    @property
    def kind_noun(self) -> str:
        return KIND_NOUNS.get(self.kind, "attack")

    def resolve(self, model: "HookedLM") -> "Attack":
        """Fill model-dependent defaults and validate against ``model`` (:class:`InputError`); default: unchanged."""
        return self

    def treat(
        self, model: "HookedLM", items: Sequence["QAItem"], emphasis: Sequence["ItemKeywords"], env: AttackEnv
    ) -> Treatment:
        """The attack applied to ``items`` asked of ``model``, emphasising ``emphasis`` (aligned with ``items``)."""
        raise NotImplementedError

    def treat_groups(
        self, model: "HookedLM", items: Sequence["QAItem"], emphasis: Sequence["ItemKeywords"], env: AttackEnv
    ) -> list[tuple[list[int], Treatment]]:
        """The items split into groups that each get their own treatment, as (indices into ``items``, treatment);
        default: one group. Cross-fitted attacks override it (e.g. ``relearn_split`` asks each fold of a model
        relearned on the other fold). The runner evaluates every group and puts the rows back in item order."""
        return [(list(range(len(items))), self.treat(model, items, emphasis, env))]

    def control(self) -> "Attack | None":
        """The condition run in the ``random_control`` arm, on the same items: by default the attack itself with
        random emphasis when it uses keywords, else none. An attack without keywords may name its own matched
        control (``ablate_direction``: a random direction of the same norm)."""
        return self if self.uses_keywords else None


# -- prompt rewrites ---------------------------------------------------------------------------------------------
Rewrite = Callable[[str, Sequence[str], str], str]
"""``(question, keywords, template) -> rewritten question``."""


def fill_template(question: str, keywords: Sequence[str], template: str) -> str:
    """``template`` with ``{question}`` and ``{keywords}`` (the keywords joined by ", ") filled in."""
    return template.replace("{keywords}", ", ".join(keywords)).replace("{question}", question)


@dataclass(frozen=True)
class PromptAttack(Attack):
    """Emphasis in the prompt: the question is rewritten (default: by filling ``template``)."""

    family: str = "prompt_emphasis"
    template: str = "{question}"
    rewrite_fn: Rewrite = fill_template

    original_arm_shared: ClassVar[bool] = True
    kind: ClassVar[str] = PROMPT_KIND

    def rewrite(self, question: str, keywords: Sequence[str]) -> str:
        return self.rewrite_fn(question, keywords, self.template)

    def with_template(self, template: str) -> "PromptAttack":
        """A copy with another template (it must contain ``{question}``)."""
        if "{question}" not in template:
            raise InputError(f"prompt strategy {self.name!r}: template {template!r} must contain {{question}}")
        return dataclasses.replace(self, template=template)

    def treat(self, model, items, emphasis, env) -> Treatment:
        return Treatment(model, [self.rewrite(it.question, kw.words) for it, kw in zip(items, emphasis)])


# -- activation edits --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationAttack(Attack):
    """Emphasis in the activations at the keyword positions of the prompt (``layers=None``: the attack's default
    layer set for the model, filled in by :meth:`resolve`)."""

    family: str = "activation_emphasis"
    layers: tuple[int, ...] | None = None

    kind: ClassVar[str] = "intervention"
    options: ClassVar[tuple[str, ...]] = ("layers",)
    control_unit: ClassVar[str] = "positions"

    def __post_init__(self) -> None:  # layers=3 is the one layer 3 (frozen: set through object.__setattr__)
        object.__setattr__(self, "layers", one_or_many(self.layers))

    def default_layers(self, n_layers: int) -> tuple[int, ...]:
        """The first half of the layers (subclasses choose their own)."""
        return tuple(range(max(1, n_layers // 2)))

    @property
    def parameters_label(self) -> str:
        """What follows ``name[layers]`` in :attr:`label` (e.g. ``x2.0`` for a factor)."""
        return ""

    @property
    def label(self) -> str:
        from unpact_mech.syntax import layers_label

        layers = "default" if self.layers is None else layers_label(self.layers)
        return f"{self.name}[{layers}]{self.parameters_label}"

    def resolve(self, model: "HookedLM") -> "ActivationAttack":
        n_layers = model.shape.n_layers
        layers = self.default_layers(n_layers) if self.layers is None else tuple(self.layers)
        bad = [L for L in layers if not 0 <= L < n_layers]
        if bad:
            raise InputError(
                f"{self.kind_noun} {self.name}: layer {bad[0]} out of range (model has layers 0..{n_layers - 1})"
            )
        resolved = dataclasses.replace(self, layers=layers)
        resolved.check(model)
        return resolved

    def check(self, model: "HookedLM") -> None:
        """Validate the attack's own options against ``model`` (:class:`InputError`); default: nothing to check."""

    def interventions(
        self, positions: Positions, env: AttackEnv, item_ids: Sequence[str] | None = None
    ) -> "InterventionFactory":
        """The factory of interventions that emphasise ``positions`` (per evaluated item; ``item_ids`` names those
        items when known) — the one way it acts."""
        raise NotImplementedError

    def treat(self, model, items, emphasis, env) -> Treatment:
        positions = [kw.positions for kw in emphasis]
        return Treatment(model, interventions=self.interventions(positions, env, [it.id for it in items]))


# -- model transforms --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelAttack(Attack):
    """Recovery by changing the model (e.g. relearning steps, quantization, direction ablation): the items are asked
    of ``transform(model, env)``. The transformed model is computed once per model and condition (``env.memo``,
    freed when the condition is done: a copy is a whole model)."""

    family: str = "weights"
    uses_keywords: bool = False

    kind: ClassVar[str] = "transform"

    def transform(self, model: "HookedLM", env: AttackEnv) -> "HookedLM":
        """The model to ask instead of ``model`` — the one way it acts. Must not modify ``model`` in place."""
        raise NotImplementedError

    def treat(self, model, items, emphasis, env) -> Treatment:
        return Treatment(env.cached(memo_key(model, self.label), lambda: self.transform(model, env)))


# -- latent read-outs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadoutAttack(Attack):
    """Recovery by reading the answer out of the model's internals (no answer is generated): an item counts as
    recovered when :meth:`readout` says so (e.g. the answer's first token is top-1 under the logit lens)."""

    family: str = "latent_readout"
    uses_keywords: bool = False

    kind: ClassVar[str] = "readout"

    def readout(self, model: "HookedLM", items: Sequence["QAItem"], env: AttackEnv) -> "pd.DataFrame":
        """One row per item: ``item_id``, ``split``, ``correct`` (0/1), ``logprob``, ``rank`` — the one way it acts."""
        raise NotImplementedError

    def treat(self, model, items, emphasis, env) -> Treatment:
        return Treatment(model, readout=lambda m, its: self.readout(m, its, env))
