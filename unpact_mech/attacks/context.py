"""Prompt-level recovery without keywords: ``few_shot`` (held-out QA pairs as earlier turns) and ``rephrase``
(the question reworded by an offline template).

Doshi & Stickland (arXiv 2411.12103) report that 5-shot prompting or a paraphrase of the question gives more than
10x the forget-set accuracy of the unlearned model; these two conditions measure that on any model and data.

``few_shot`` (family ``few_shot``, option ``shots``, default 3; label ``few_shot[k3]``)
    The scored question comes after ``shots`` earlier (question, gold answer) turns
    (:meth:`~unpact_mech.scoring.prompt.PromptFormat.with_history`: user/assistant turns in the chat format, filled-in
    ``Question: ... Answer: ...`` blocks in the plain one). The shots are held-out UTILITY items (any of them, whether
    or not the original model answers them: the shots only show the format and that answering is expected); when
    the run has fewer than ``shots + 1`` utility items, the larger of the utility and the retain pools is used (with
    no utility and no retain items it is an :class:`~unpact_mech.errors.InputError`). Forget items are never shots.
    Per item the shots are a seeded draw (:func:`draw_shots`: the run's seed and the item id), so an item gets the
    same shots in every arm and run; the scored item itself (and any item with the same question) is never among
    them. When the prompt with all shots plus the gold answer would exceed the model's context, the last shots are
    dropped until it fits; the shots each item got are reported as the detail table ``<label>.shots`` (columns
    ``item_id``, ``model``, ``shots``, ``shots_used``, ``shot_ids``). ``shots=0`` is exactly the item's plain prompt.

``rephrase`` (family ``rephrase``, option ``style``, default ``indirect``; label ``rephrase[indirect]``)
    The question rewritten by a registered offline rephrasing: a rule-based TEMPLATE of the question, not a semantic
    paraphrase by a model (no model, no network). Built-in styles (:data:`REPHRASINGS`; add one from a script with
    :func:`register_rephrasing`), for "What is the capital of France?":

    ================  ===========================================================================================
    style             output
    ================  ===========================================================================================
    ``indirect``      ``I would like to know what the capital of France is.`` (indirect speech, :func:`indirect`)
    ``tell_me``       ``Tell me: what is the capital of France?``
    ``third_person``  ``My friend asked me: What is the capital of France? What should I tell her?``
    ``answer_first``  ``Answer in a few words. What is the capital of France?``
    ``quiz``          ``Quiz question: What is the capital of France?``
    ================  ===========================================================================================

Neither condition uses keywords, so neither has a random-word control arm; both run on the original model too.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from unpact_mech.attacks.base import PROMPT_KIND, Attack, AttackEnv, PromptAttack, Treatment, fill_template
from unpact_mech.data.splits import RETAIN
from unpact_mech.errors import InputError
from unpact_mech.scoring.tokens import encode_answer, encode_item, encode_prompt

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.tokens import EncodedQA

#: Families of the two conditions (distinct from every keyword-emphasis family: never "trained against" by keyguard).
FEW_SHOT = "few_shot"
REPHRASE = "rephrase"


# -- few-shot ----------------------------------------------------------------------------------------------------
def check_shots(shots: object) -> int:
    """``shots`` as a non-negative int, else a one-line :class:`InputError` naming the option and value."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise InputError(f"few_shot: option shots must be an integer >= 0, got {shots!r}")
    return shots


def shot_pool(utility_ids: Sequence[str], retain_ids: Sequence[str], shots: int) -> list[str]:
    """The ids shots are drawn from: the utility items when there are at least ``shots + 1`` of them (one may be
    the scored item), else the larger of the utility and retain pools (ties: utility); sorted, so the pool does not
    depend on the data's order. Empty when both are empty."""
    utility, retain = sorted(set(utility_ids)), sorted(set(retain_ids))
    if len(utility) >= shots + 1 or len(utility) >= len(retain):
        return utility
    return retain


def draw_shots(item: "QAItem", pool: Sequence[str], items: Mapping[str, "QAItem"], shots: int, seed: int) -> list[str]:
    """``min(shots, n)`` ids drawn without replacement from the ``n`` pool items that are not ``item`` (nor share
    its question), by ``random.Random(f"{seed}:{item.id}")`` — the same draw for the same item in every arm and
    run, whatever else is evaluated."""
    candidates = [i for i in pool if i != item.id and items[i].question.strip() != item.question.strip()]
    return random.Random(f"{seed}:{item.id}").sample(candidates, min(shots, len(candidates)))


def encode_with_shots(model: "HookedLM", item: "QAItem", shots: Sequence["QAItem"]) -> tuple["EncodedQA", int]:
    """``item`` encoded after the first ``k`` of ``shots`` as earlier turns (gold answers), with ``k`` the largest
    count (at most ``len(shots)``) whose prompt + gold answer fits the model's context; returns (encoded, k)."""
    answer_ids = encode_answer(model.tokenizer, model.prompt_format, item.answer)
    k = len(shots)
    while k > 0:
        fmt = model.prompt_format.with_history([(s.question, s.answer) for s in shots[:k]])
        if len(encode_prompt(model.tokenizer, fmt, item.question)) + len(answer_ids) <= model.shape.n_ctx:
            return encode_item(model, item, prompt_format=fmt), k
        k -= 1
    return encode_item(model, item), 0


@dataclass(frozen=True)
class FewShot(Attack):
    """``shots`` held-out QA pairs as earlier turns before the question (see the module docstring). A prompt
    strategy that acts through its own encoded prompts (:attr:`Treatment.encoded`), not a question rewrite."""

    name: str = "few_shot"
    description: str = "held-out utility QA pairs as earlier turns before the question"
    family: str = FEW_SHOT
    uses_keywords: bool = False
    shots: int = 3

    original_arm_shared: ClassVar[bool] = True
    kind: ClassVar[str] = PROMPT_KIND
    options: ClassVar[tuple[str, ...]] = ("shots",)

    @property
    def label(self) -> str:
        return f"{self.name}[k{self.shots}]"

    def resolve(self, model: "HookedLM") -> "FewShot":
        check_shots(self.shots)
        return self

    def pool(self, env: AttackEnv) -> list[str]:
        """The ids the shots are drawn from (:func:`shot_pool`, once per run); :class:`InputError` when empty."""

        def compute() -> list[str]:
            retain = [i for i, it in env.items.items() if it.split == RETAIN]
            return shot_pool(env.utility_ids, retain, self.shots)

        pool = env.cached(("few_shot_pool", self.shots), compute)
        if not pool:
            raise InputError(f"{self.name}: the run has no utility or retain items to use as shots")
        return pool

    def shots_for(self, item: "QAItem", env: AttackEnv) -> list["QAItem"]:
        """The shot items of ``item`` in ``env``, in turn order."""
        return [env.items[i] for i in draw_shots(item, self.pool(env), env.items, self.shots, env.seed)]

    def treat(self, model, items, emphasis, env) -> Treatment:
        import pandas as pd

        if check_shots(self.shots) == 0:
            return Treatment(model, encoded=[encode_item(model, it) for it in items])
        encoded, rows = [], []
        for it in items:
            shots = self.shots_for(it, env)
            enc, used = encode_with_shots(model, it, shots)
            encoded.append(enc)
            rows.append({"item_id": it.id, "model": env.role(model), "shots": self.shots, "shots_used": used,
                         "shot_ids": " | ".join(s.id for s in shots[:used])})  # fmt: skip
        if rows:
            env.record(self.label, "shots", pd.DataFrame(rows))
        return Treatment(model, encoded=encoded)


# -- rephrasings -------------------------------------------------------------------------------------------------
#: Offline rephrasing styles: name -> ``question -> rephrased question``, in the order the battery runs them.
REPHRASINGS: dict[str, Callable[[str], str]] = {}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def register_rephrasing(name: str, fn: Callable[[str], str]) -> Callable[[str], str]:
    """Add the style ``name`` (letters, digits, ``_ . -``); registering the same function twice is harmless, another
    function under a taken name is a ValueError. Use it as ``rephrase:style=NAME``."""
    if not callable(fn):
        raise TypeError(f"register_rephrasing takes a function, got {type(fn).__name__}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"rephrasing name {name!r} must be letters, digits, '_', '.' or '-'")
    if name in REPHRASINGS and REPHRASINGS[name] is not fn:
        raise ValueError(f"rephrasing {name!r} is already registered")
    REPHRASINGS[name] = fn
    return fn


def get_rephrasing(style: str) -> Callable[[str], str]:
    """The registered style ``style``; unknown: a one-line :class:`InputError` listing the styles."""
    if style not in REPHRASINGS:
        raise InputError(f"rephrase: unknown style {style!r}; choose from: {', '.join(REPHRASINGS)}")
    return REPHRASINGS[style]


_WH = {"what", "which", "who", "whom", "whose", "where", "when", "why", "how"}
_PREPS = {
    "in", "on", "at", "from", "to", "for", "by", "with", "of", "about", "into", "during", "under", "over", "after",
    "before", "between", "through", "as",
}  # fmt: skip
_COPULAS = {"is", "are", "was", "were"}
_DO = {"do", "does", "did"}
_MODALS = {"can", "could", "will", "would", "should", "shall", "may", "might", "must"}
_AUX = _COPULAS | _DO | _MODALS
_DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "his", "her", "their", "our", "my", "your"}
_ARTICLES = {"a", "an", "the"}
_RELATIVES = {"that", "which", "who", "whom", "whose", "where"}
#: Words after which a predicate participle/adjective may end its clause ("located in", "called when").
_CLAUSE_ENDS = _PREPS | {"when", "if", "because", "while", "and", "or"}
_PARTICIPLES = {
    "made", "known", "spoken", "written", "built", "found", "given", "taken", "held", "worn", "won", "sung", "drawn",
    "eaten", "born", "fought", "sold", "seen", "done", "grown", "shown", "thrown", "chosen", "driven", "led", "kept",
    "left", "lost", "paid", "run", "set", "sent", "spent", "told", "thought", "bought", "brought", "caught", "taught",
    "hidden", "broken", "frozen", "stolen", "beaten", "bitten", "ridden", "risen", "shaken", "woken", "struck",
}  # fmt: skip
_PREDICATE_ADJECTIVES = {"famous", "native", "responsible", "popular", "known"}
_SUBJECT_LEADS = {"only", "also", "not", "never", "be", "have", "first", "once"}
_FUNCTION_WORDS = _WH | _PREPS | _AUX | _ARTICLES | {"has", "have", "had", "name", "tell"}
INDIRECT_FALLBACK = "I would like to know the answer to this question: {question}"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def lower_question_word(question: str) -> str:
    """``question`` with its first letter lower-cased when its first word is a function word (question word,
    preposition, auxiliary, article: "What", "In", "Is", "The"), else unchanged (a name such as "Koalas" or
    "Paris" keeps its capital)."""
    first = question.split(maxsplit=1)[0] if question.split() else ""
    return _lower_first(question) if first.lower() in _FUNCTION_WORDS and not first.isupper() else question


def _is_participle(word: str) -> bool:
    """A lower-case past participle: a listed irregular one, or ending in -ed (at least 5 letters)."""
    return word.islower() and (word in _PARTICIPLES or (word.endswith("ed") and len(word) >= 5))


def _copula_position(rest: Sequence[str]) -> int:
    """Where the copula goes back into the inverted clause ``rest`` (its subject + predicate, without the copula):
    before the first predicate participle or adjective that ends its clause (followed by nothing, a preposition or
    a subordinator, and not after a determiner: "the colored part" is attributive), else — when ``rest`` ends with
    a preposition ("John Lennon a member of") — before the first later article, else at the end."""
    lw = [w.lower() for w in rest]
    for i in range(1, len(rest)):
        predicate = _is_participle(rest[i]) or (rest[i].islower() and lw[i] in _PREDICATE_ADJECTIVES)
        ends = i + 1 == len(rest) or lw[i + 1] in _CLAUSE_ENDS
        if predicate and ends and lw[i - 1] not in _DETERMINERS:
            return i
    if lw and lw[-1] in _PREPS:
        for i in range(1, len(rest)):
            if lw[i] in _ARTICLES:
                return i
    return len(rest)


def indirect(question: str) -> str:
    """ "What is the capital of France?" -> "I would like to know what the capital of France is." — by rules:

    * the question starts with a question word, optionally after a preposition ("In which city ...");
      the question phrase runs to the first auxiliary (is/are/was/were, do/does/did, a modal);
    * no auxiliary (or a relative pronoun before it): the question phrase is the subject — the word order stays
      ("Who wrote Hamlet?" -> "... know who wrote Hamlet.");
    * a copula: if what follows starts with a participle, preposition or adverb, the question phrase is the subject
      and the order stays ("What language is spoken in Italy?"); else the copula goes back after the subject
      (:func:`_copula_position`: "In which city is the Eiffel Tower located?" -> "in which city the Eiffel Tower is
      located", "Which sport is Roger Federer famous for?" -> "which sport Roger Federer is famous for");
    * ``do`` is dropped ("In which sport do players hit a puck?" -> "in which sport players hit a puck");
    * a modal followed by be/have/only/not keeps the order ("Which hero could only be wounded ...").

    Anything else — does/did (the verb would need its tense changed), other modals, a question without a leading
    question word ("Koalas are native to which country?"), text without a final "?" — falls back to the generic
    wrapper :data:`INDIRECT_FALLBACK` ("I would like to know the answer to this question: {question}").
    """
    fallback = INDIRECT_FALLBACK.replace("{question}", question)
    text = question.strip()
    if not text.endswith("?"):
        return fallback
    words = text[:-1].split()
    lw = [w.lower() for w in words]
    if len(words) < 2:
        return fallback
    w = 0 if lw[0] in _WH else 1 if lw[0] in _PREPS and lw[1] in _WH else None
    if w is None:
        return fallback
    aux = next((i for i in range(w + 1, len(words)) if lw[i] in _AUX), None)
    if aux is not None and any(lw[i] in _RELATIVES for i in range(w + 1, aux)):
        aux = None  # "Which river flows through the city that is ...": the auxiliary belongs to a relative clause
    if aux is None:
        return _indirect_sentence(words) if w == 0 else fallback
    head, verb, rest = words[:aux], words[aux], words[aux + 1 :]
    if not rest:
        return fallback
    subject_question = w == 0 and (
        _is_participle(rest[0])
        or rest[0].lower() in _PREPS | _SUBJECT_LEADS
        or (rest[0].islower() and rest[0].endswith("ly"))
    )
    if lw[aux] in _COPULAS:
        if subject_question:
            return _indirect_sentence(words)
        i = _copula_position(rest)
        return _indirect_sentence([*head, *rest[:i], verb, *rest[i:]])
    if lw[aux] == "do" and not subject_question:
        return _indirect_sentence([*head, *rest])
    if lw[aux] in _MODALS and w == 0 and rest[0].lower() in _SUBJECT_LEADS:
        return _indirect_sentence(words)
    return fallback


def _indirect_sentence(words: Sequence[str]) -> str:
    return f"I would like to know {_lower_first(' '.join(words))}."


def tell_me(question: str) -> str:
    """ "Tell me: what is the capital of France?" (first letter lower-cased after a function word)."""
    return f"Tell me: {lower_question_word(question.strip())}"


def third_person(question: str) -> str:
    """ "My friend asked me: What is the capital of France? What should I tell her?"."""
    return f"My friend asked me: {question.strip()} What should I tell her?"


def answer_first(question: str) -> str:
    """ "Answer in a few words. What is the capital of France?"."""
    return f"Answer in a few words. {question.strip()}"


def quiz(question: str) -> str:
    """ "Quiz question: What is the capital of France?"."""
    return f"Quiz question: {question.strip()}"


for _name, _fn in (
    ("indirect", indirect), ("tell_me", tell_me), ("third_person", third_person), ("answer_first", answer_first),
    ("quiz", quiz),
):  # fmt: skip
    register_rephrasing(_name, _fn)

DEFAULT_STYLE = "indirect"


@dataclass(frozen=True)
class Rephrase(PromptAttack):
    """The question reworded by the offline rephrasing ``style`` (see the module docstring); the keywords are
    ignored. A template set for ``rephrase`` (``RecoveryConfig.templates``) is filled with the REPHRASED question."""

    name: str = "rephrase"
    description: str = "the question reworded by an offline template (not a model paraphrase)"
    family: str = REPHRASE
    uses_keywords: bool = False
    style: str = DEFAULT_STYLE

    options: ClassVar[tuple[str, ...]] = ("style",)

    @property
    def label(self) -> str:
        return f"{self.name}[{self.style}]"

    def resolve(self, model: "HookedLM") -> "Rephrase":
        get_rephrasing(self.style)
        return self

    def rewrite(self, question: str, keywords: Sequence[str]) -> str:
        out = get_rephrasing(self.style)(question)
        if not isinstance(out, str) or not out.strip():
            raise InputError(f"rephrase: style {self.style!r} returned {out!r} for the question {question!r}")
        return fill_template(out, keywords, self.template)

    def treat(self, model, items, emphasis, env) -> Treatment:
        words = [kw.words if kw is not None else () for kw in emphasis] if emphasis else [()] * len(items)
        return Treatment(model, [self.rewrite(it.question, w) for it, w in zip(items, words)])

    def with_style(self, style: str) -> "Rephrase":
        """A copy with another (registered) style."""
        get_rephrasing(style)
        return dataclasses.replace(self, style=style)


#: The two conditions, with their defaults (the lead registers them).
CONTEXT_ATTACKS: tuple[Attack, ...] = (FewShot(), Rephrase())
