"""Prompt strategies: rewrite a question so that its keywords are emphasised ("FocusOnKey" in the prompt).

The paper's exact template is unknown; these are our documented defaults (``{question}``, ``{keywords}`` = the
keywords joined by ", "; every template is configurable). Keyword occurrences inside the question are found by the
one text rule (:func:`unpact_mech.data.text.keyword_spans`: case-insensitive, word-bounded).

================  ==========================================================  ============================
name              default template / rule                                     emphasis
================  ==========================================================  ============================
focus             ``Focus on the key words: {keywords}. {question}``          instruction naming keywords
repeat_keywords   ``{question} Key words: {keywords}, {keywords}.``           keyword repetition
repeat_question   ``{question} {question}``                                   question repeated
quote             every keyword occurrence wrapped in double quotes           in place
uppercase         every keyword occurrence upper-cased                        in place
keywords_first    ``{keywords}: {question}``                                  keywords moved to the front
neutral           ``Answer the following question. {question}``               control: instruction, no keywords
================  ==========================================================  ============================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from unpact_mech.attacks.base import PromptAttack
from unpact_mech.data.text import keyword_spans


def in_place(wrap: Callable[[str], str]):
    """A rewrite applying ``wrap`` to every (non-overlapping) keyword occurrence, longest keywords first."""

    def rewrite(question: str, keywords: Sequence[str], template: str) -> str:
        spans: list[tuple[int, int]] = []
        for kw in sorted(set(keywords), key=len, reverse=True):
            for a, b in keyword_spans(question, kw):
                if all(b <= s or a >= e for s, e in spans):
                    spans.append((a, b))
        out, last = [], 0
        for a, b in sorted(spans):
            out += [question[last:a], wrap(question[a:b])]
            last = b
        return "".join(out + [question[last:]])

    return rewrite


#: Families: what the rewrite does, so that a method trained on one rewrite is not credited with resisting a
#: near-copy of it (a condition is "held out" only if no training rewrite shares its family).
KEYWORDS_NAMED = "keywords_named"  # added text names the keywords (before or after the question)
KEYWORDS_MARKED = "keywords_marked"  # the keywords are marked in place (quotes, case)
QUESTION_REPEATED = "question_repeated"
INSTRUCTION = "instruction"  # an instruction without keywords

PROMPT_ATTACKS: tuple[PromptAttack, ...] = (
    PromptAttack(
        "focus",
        "instruction naming the keywords",
        family=KEYWORDS_NAMED,
        template="Focus on the key words: {keywords}. {question}",
    ),
    PromptAttack(
        "repeat_keywords",
        "keywords repeated after the question",
        family=KEYWORDS_NAMED,
        template="{question} Key words: {keywords}, {keywords}.",
    ),
    PromptAttack(
        "repeat_question",
        "the question repeated",
        family=QUESTION_REPEATED,
        template="{question} {question}",
        uses_keywords=False,
    ),
    PromptAttack(
        "quote",
        "keywords quoted in place",
        family=KEYWORDS_MARKED,
        template="",
        rewrite_fn=in_place(lambda w: f'"{w}"'),
    ),
    PromptAttack(
        "uppercase",
        "keywords upper-cased in place",
        family=KEYWORDS_MARKED,
        template="",
        rewrite_fn=in_place(str.upper),
    ),
    PromptAttack(
        "keywords_first", "keywords moved to the front", family=KEYWORDS_NAMED, template="{keywords}: {question}"
    ),
    PromptAttack(
        "neutral",
        "control: an instruction without keywords",
        family=INSTRUCTION,
        template="Answer the following question. {question}",
        uses_keywords=False,
        is_control=True,
    ),
)
