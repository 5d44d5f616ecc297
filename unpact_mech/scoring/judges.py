"""Correctness judges on greedy continuations (the paper used an LLM judge; offline we use these).

Normalisation (:func:`normalize_tokens`): Unicode NFKD without accents, lower case, thousands separators dropped
("1,000" -> "1000"), then tokens = decimal numbers ("18.0" stays one token, so "0" never matches inside
"-18.0") or letter runs; punctuation is dropped. A decimal number is written by its value: trailing zeros of the
fraction are dropped ("100.0" -> "100", "2.50" -> "2.5"), so "approximately 100.0 degrees" contains the answer "100".

* ``contains``: the answer's (or an alias's) token sequence occurs contiguously in the continuation's tokens
  (a leading article "the/a/an" in the answer is optional). A one-letter capital answer (a multiple-choice option
  letter, ``A``-``Z``) must occur as that capital letter standing alone in the continuation as written ("A", "(A)",
  "A."), so the article in "It is a virus." is not the option A.
* ``rouge_l``: ROUGE-L recall = LCS(answer, continuation) / len(answer) on those tokens; correct if >= threshold.

A judge is any function ``(continuation, answer, aliases) -> bool``; register more in :data:`JUDGES`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

from unpact_mech.errors import InputError

_TOKEN_RE = re.compile(r"\d+(?:\.\d+)*|[^\W\d_]+")
_DECIMAL_RE = re.compile(r"\d+\.\d+")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ARTICLES = {"the", "a", "an"}

Judge = Callable[[str, str, Sequence[str]], bool]


def _canonical_number(token: str) -> str:
    """``"100.0"`` -> ``"100"``, ``"2.50"`` -> ``"2.5"``; other tokens (words, ``"1.2.3"``) unchanged."""
    if _DECIMAL_RE.fullmatch(token):
        token = token.rstrip("0").rstrip(".")
    return token


def normalize_tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return [_canonical_number(t) for t in _TOKEN_RE.findall(_THOUSANDS_RE.sub("", text))]


def _contains_seq(hay: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(hay[i : i + n]) == list(needle) for i in range(len(hay) - n + 1))


def _variants(answer: str) -> list[list[str]]:
    toks = normalize_tokens(answer)
    out = [toks]
    if len(toks) > 1 and toks[0] in _ARTICLES:
        out.append(toks[1:])
    return [t for t in out if t]


def _option_letter(answer: str) -> str | None:
    """The letter of a one-letter capital answer (``"B"``), else None."""
    a = answer.strip()
    return a if len(a) == 1 and "A" <= a <= "Z" else None


def contains_answer(continuation: str, answer: str, aliases: Sequence[str] = ()) -> bool:
    """Whole-token containment of the answer or any alias in the normalised continuation; an option letter as a
    standalone capital letter in the continuation as written."""
    hay = normalize_tokens(continuation)
    for a in (answer, *aliases):
        letter = _option_letter(a)
        if letter is not None:
            if re.search(rf"(?<![^\W\d_]){letter}(?![^\W\d_])", continuation):
                return True
        elif any(_contains_seq(hay, v) for v in _variants(a)):
            return True
    return False


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) dynamic programme)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_recall(continuation: str, answer: str) -> float:
    """ROUGE-L recall of the answer's tokens in the continuation (0 if the answer has no tokens)."""
    ref = normalize_tokens(answer)
    return lcs_length(ref, normalize_tokens(continuation)) / len(ref) if ref else 0.0


def rouge_judge(threshold: float = 1.0) -> Judge:
    def judge(continuation: str, answer: str, aliases: Sequence[str] = ()) -> bool:
        return max(rouge_l_recall(continuation, a) for a in (answer, *aliases)) >= threshold

    return judge


JUDGES: dict[str, Judge] = {"contains": contains_answer, "rouge_l": rouge_judge(1.0)}


def get_judge(name: str) -> Judge:
    if name not in JUDGES:
        raise InputError(f"unknown judge {name!r}; choose one of: {', '.join(JUDGES)}")
    return JUDGES[name]
