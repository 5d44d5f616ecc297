"""Prompt/answer tokenisation and token <-> word <-> keyword alignment — the ONE place for both.

A prompt is tokenised as a whole string (BOS prepended explicitly when the format says so) with the fast
tokenizer's character offsets. Alignment is by character overlap: token ``i`` belongs to a character span
``[a, b)`` iff ``start_i < b`` and ``end_i > a`` (zero-width tokens such as BOS belong to nothing).

* question tokens: tokens overlapping the question's span — the only ones attribution may ablate
  (BOS, chat-template and separator tokens never are);
* words: maximal runs matching :data:`~unpact_mech.data.text.WORD_RE` inside the question (punctuation marks are
  their own units); each
  question token goes to the word it overlaps most (a whitespace-only token to the word that follows it), so
  the words partition the question tokens;
* keywords: case-insensitive, word-bounded occurrences of the keyword text in the question (multi-word keywords
  allowed); a keyword that does not occur is an input error naming the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unpact_mech.data.text import WORD_RE, keyword_spans
from unpact_mech.errors import InputError
from unpact_mech.scoring.prompt import PromptFormat

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM


def tokens_in_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the tokens whose character span overlaps ``[start, end)``."""
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


@dataclass(frozen=True)
class Word:
    """A word (or punctuation mark) of the question: its text, span in the prompt text, and its tokens."""

    index: int
    text: str
    start: int
    end: int
    positions: tuple[int, ...]


@dataclass(frozen=True)
class EncodedPrompt:
    """A rendered, tokenised prompt. ``offsets[i]`` is token i's character span in ``text`` (BOS: (0, 0))."""

    text: str
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    question_start: int
    question_end: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def question(self) -> str:
        return self.text[self.question_start : self.question_end]

    @property
    def question_positions(self) -> list[int]:
        """Token positions inside the question (ablatable); template/BOS/separator positions are excluded."""
        return tokens_in_span(self.offsets, self.question_start, self.question_end)

    def positions_of(self, keyword: str, *, item_id: str = "?") -> list[int]:
        """Token positions of every occurrence of ``keyword`` in the question."""
        spans = keyword_spans(self.question, keyword)
        if not spans:
            raise InputError(f"item {item_id!r}: keyword {keyword!r} does not occur in the question")
        found: set[int] = set()
        for a, b in spans:
            found.update(tokens_in_span(self.offsets, self.question_start + a, self.question_start + b))
        return sorted(found)

    def words(self) -> list[Word]:
        """The question's words with the token positions that make them up (each token in one word)."""
        units = [
            (m.start() + self.question_start, m.end() + self.question_start, m.group())
            for m in WORD_RE.finditer(self.question)
        ]
        owned: list[list[int]] = [[] for _ in units]
        if not units:
            return []
        for pos in self.question_positions:
            s, e = self.offsets[pos]
            overlaps = [min(e, b) - max(s, a) for a, b, _ in units]
            if max(overlaps) > 0:
                owned[overlaps.index(max(overlaps))].append(pos)
            else:  # a whitespace-only token leads the next word (BPE convention: " France" = " " + "France")
                nxt = [i for i, (a, _, _) in enumerate(units) if a >= e]
                owned[nxt[0] if nxt else len(units) - 1].append(pos)
        return [Word(i, text, a, b, tuple(pos)) for i, ((a, b, text), pos) in enumerate(zip(units, owned)) if pos]

    def keyword_words(self, keywords: Sequence[str], *, item_id: str = "?") -> list[int]:
        """Indices (into :meth:`words`) of the words covered by any of ``keywords``."""
        hits: set[int] = set()
        words = self.words()
        for kw in keywords:
            spans = keyword_spans(self.question, kw)
            if not spans:
                raise InputError(f"item {item_id!r}: keyword {kw!r} does not occur in the question")
            for a, b in spans:
                a, b = a + self.question_start, b + self.question_start
                hits.update(w.index for w in words if w.start < b and w.end > a)
        return sorted(hits)


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("the model's tokenizer is not a fast tokenizer; character offsets are required")


def encode_prompt(tokenizer, fmt: PromptFormat, question: str) -> EncodedPrompt:
    """Render ``question`` with ``fmt`` and tokenise it with offsets (BOS explicit, no other specials added)."""
    _require_fast(tokenizer)
    rendered = fmt.render(tokenizer, question)
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if rendered.bos:
        ids, offsets = [tokenizer.bos_token_id] + ids, [(0, 0)] + offsets
    return EncodedPrompt(rendered.text, tuple(ids), tuple(offsets), rendered.question_start, rendered.question_end)


def encode_answer(tokenizer, fmt: PromptFormat, answer: str) -> tuple[int, ...]:
    """Token ids of the teacher-forced answer text (format's answer prefix included, no specials)."""
    return tuple(tokenizer(fmt.answer_text(answer), add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class EncodedQA:
    """An item's prompt and gold answer tokens under a model's prompt format."""

    item_id: str
    prompt: EncodedPrompt
    answer_ids: tuple[int, ...]


def encode_item(
    model: "HookedLM",
    item: "QAItem",
    *,
    question: str | None = None,
    answer: str | None = None,
    prompt_format: "PromptFormat | None" = None,
) -> EncodedQA:
    """Encode an item for ``model`` (``question``/``answer`` override the item's text, e.g. for rewrites;
    ``prompt_format`` the model's format, e.g. with few-shot history).

    Raises :class:`InputError` if the answer tokenises to nothing or prompt + answer exceed the context.
    """
    fmt = model.prompt_format if prompt_format is None else prompt_format
    prompt = encode_prompt(model.tokenizer, fmt, item.question if question is None else question)
    answer = item.answer if answer is None else answer
    answer_ids = encode_answer(model.tokenizer, fmt, answer) if answer.strip() else ()
    if not answer_ids:
        raise InputError(f"item {item.id!r}: the answer tokenises to nothing")
    model.check_length(len(prompt) + len(answer_ids), f"item {item.id!r}")
    return EncodedQA(item.id, prompt, answer_ids)


def encode_items(model: "HookedLM", items: Sequence["QAItem"]) -> list[EncodedQA]:
    return [encode_item(model, it) for it in items]
