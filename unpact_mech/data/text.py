"""Text rules shared by the data contract and the tokenizer alignment: what a word is and where a keyword occurs.

* a *word* is a maximal run matching :data:`WORD_RE` — letters/digits/underscore, joined by inner apostrophes,
  hyphens or dots ("don't", "Jean-Paul", "U.S") — and every other non-space character is a word of its own
  (punctuation);
* a *keyword* occurs in a question wherever its text appears case-insensitively and not inside a longer word
  (:func:`keyword_spans`); multi-word keywords are allowed.

The record validation (:mod:`unpact_mech.data.record`) and the token alignment (:mod:`unpact_mech.scoring.tokens`)
both use these two rules, so "a keyword must occur in the question" means the same thing everywhere.
"""

from __future__ import annotations

import re

WORD_RE = re.compile(r"\w+(?:['\u2019\-.]\w+)*|[^\w\s]")


def keyword_spans(question: str, keyword: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``keyword`` in ``question``: case-insensitive, not inside a longer word."""
    kw = keyword.strip()
    if not kw:
        return []
    pattern = re.compile(r"(?<!\w)" + re.escape(kw) + r"(?!\w)", re.IGNORECASE)
    return [m.span() for m in pattern.finditer(question)]


def is_word(text: str) -> bool:
    """True for a word of :data:`WORD_RE` with at least one letter or digit (not a punctuation mark)."""
    return bool(WORD_RE.fullmatch(text)) and any(ch.isalnum() for ch in text)
