"""Attribution units of a prompt: question tokens or question words, and the item they come from.

Units come only from the foundation's alignment (:mod:`unpact_mech.scoring.tokens`): token units are the
``question_positions`` (BOS, chat-template and separator tokens are never units), word units are
``EncodedPrompt.words()`` in that order (a word = its sub-word tokens, ablated or summed together), and annotated
keywords are matched by ``EncodedPrompt.keyword_words`` / ``positions_of``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from unpact_mech.data.record import UNSPLIT, QAItem
from unpact_mech.errors import InputError
from unpact_mech.scoring.own_answer import OwnAnswer, own_answers
from unpact_mech.scoring.tokens import EncodedPrompt, EncodedQA, encode_item

if TYPE_CHECKING:
    from unpact_mech.attribution.targets import Target
    from unpact_mech.models.hooked import HookedLM

LEVELS = ("token", "word")


@dataclass(frozen=True)
class Unit:
    """One attribution unit: ``index`` in the item's unit list, its text, its prompt token ``positions``, and
    ``word`` — the :attr:`~unpact_mech.scoring.tokens.Word.index` of the question word it belongs to."""

    index: int
    text: str
    positions: tuple[int, ...]
    word: int


@dataclass(frozen=True)
class PreparedItem:
    """An item encoded for one model: prompt, the scored answer tokens, split and annotated keywords.

    ``own``: the ORIGINAL model's own answer sentence (context + answer tokens, :mod:`unpact_mech.scoring.own_answer`)
    for the ``answer_in_context`` target; None scores the bare gold answer right after the prompt. The teacher-forced
    ``continuation`` after the prompt is ``context_ids + answer_ids``; targets score the ``answer_ids`` only."""

    encoded: EncodedQA
    split: str = UNSPLIT
    keywords: tuple[str, ...] = ()
    own: OwnAnswer | None = None

    @property
    def item_id(self) -> str:
        return self.encoded.item_id

    @property
    def prompt(self) -> EncodedPrompt:
        return self.encoded.prompt

    @property
    def context_ids(self) -> tuple[int, ...]:
        """The teacher-forced tokens between the prompt and the scored answer (empty for the bare answer)."""
        return self.own.context_ids if self.own is not None else ()

    @property
    def answer_ids(self) -> tuple[int, ...]:
        """The scored answer tokens: inside the own sentence, or the bare gold answer."""
        return self.own.answer_ids if self.own is not None else self.encoded.answer_ids

    @property
    def n_context(self) -> int:
        return len(self.context_ids)

    @property
    def continuation(self) -> tuple[int, ...]:
        """Everything teacher-forced after the prompt: ``context_ids + answer_ids``."""
        return self.context_ids + self.answer_ids

    @property
    def prompt_len(self) -> int:
        return len(self.encoded.prompt.ids)

    @property
    def prefix_len(self) -> int:
        """Tokens before the scored answer: prompt + context (readout positions start at ``prefix_len - 1``)."""
        return self.prompt_len + self.n_context

    @property
    def sequence(self) -> list[int]:
        """The teacher-forced sequence ``prompt + context + answer`` (token ids)."""
        return list(self.encoded.prompt.ids) + list(self.continuation)


ItemLike = QAItem | EncodedQA | PreparedItem


def prepare_item(model: "HookedLM", item: ItemLike, own: OwnAnswer | None = None) -> PreparedItem:
    """Encode a :class:`QAItem` for ``model`` (or wrap an already encoded item), scoring the answer inside ``own``
    (the original's own answer sentence) when given.

    Raises :class:`InputError` when the answer tokenises to nothing or the item exceeds the context.
    """
    if isinstance(item, PreparedItem):
        return item if own is None else replace(item, own=own)
    if isinstance(item, EncodedQA):
        if not item.answer_ids:
            raise InputError(f"item {item.item_id!r}: the answer tokenises to nothing")
        return PreparedItem(item, own=own)
    prepared = PreparedItem(encode_item(model, item), item.split, tuple(item.keywords), own)
    model.check_length(len(prepared.sequence), f"item {item.id!r}")
    return prepared


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise InputError(f"unknown attribution level {level!r}; choose one of: {', '.join(LEVELS)}")
    return level


def prompt_units(prompt: EncodedPrompt, level: str) -> list[Unit]:
    """The question's tokens (``level="token"``) or words (``level="word"``) as :class:`Unit` s."""
    check_level(level)
    words = prompt.words()
    if level == "word":
        return [Unit(i, w.text, tuple(w.positions), w.index) for i, w in enumerate(words)]
    owner = {p: w.index for w in words for p in w.positions}
    units = []
    for i, p in enumerate(prompt.question_positions):
        s, e = prompt.offsets[p]
        units.append(Unit(i, prompt.text[s:e], (p,), owner.get(p, -1)))
    return units


def keyword_unit_mask(prepared: PreparedItem, units: Sequence[Unit]) -> list[bool]:
    """Which units are (part of) an annotated keyword of the item (all False when it has none).

    Keyword -> word matching is the foundation's (:meth:`EncodedPrompt.keyword_words`): a token unit is a
    keyword unit when its word is.
    """
    if not prepared.keywords:
        return [False] * len(units)
    words = set(prepared.prompt.keyword_words(prepared.keywords, item_id=prepared.item_id))
    return [u.word in words for u in units]


def position_labels(model: "HookedLM", prepared: PreparedItem) -> list[str]:
    """Display text of every position of the teacher-forced sequence (prompt text slices; answer tokens
    decoded; zero-width specials such as BOS by their token string)."""
    prompt = prepared.prompt
    labels = []
    for p, (s, e) in enumerate(prompt.offsets):
        labels.append(prompt.text[s:e] if e > s else model.tokenizer.convert_ids_to_tokens(prompt.ids[p]))
    labels.extend(model.tokenizer.decode([t]) for t in prepared.continuation)
    return labels


def prepare_for(model: "HookedLM", item: ItemLike, target: "str | Target") -> tuple[PreparedItem, "Target"]:
    """The item prepared for ``target`` (``auto`` resolved for ``model``) and the target: for ``answer_in_context``
    the answer is scored inside the own answer sentence carried by a :class:`PreparedItem`, else inside ``model``'s
    own greedy answer (so pass items prepared on the ORIGINAL model to score an unlearned one — :func:`attribute_items`
    does; an item whose sentence lacks the answer falls back to the bare answer)."""
    from unpact_mech.attribution.targets import get_target

    tgt = get_target(target, model)
    prepared = prepare_item(model, item)
    if tgt.in_context and prepared.own is None:
        if not isinstance(item, QAItem):
            raise ValueError(
                "target answer_in_context needs a QAItem, or a PreparedItem carrying the original's own answer"
            )
        own = own_answers(model, [item], [prepared.encoded])[0]
        prepared = replace(prepared, own=own)
    return prepared, tgt
