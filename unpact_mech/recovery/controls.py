"""Controls of the recovery experiment: random non-keyword words or positions, and the seeded control samples.

* random words (for prompt rewrites): per item, as many non-keyword words of the question as it has keywords;
* random positions (for activation edits, which act on token positions): per item, as many non-keyword QUESTION
  token positions as it has keyword tokens — matched in token count, not word count;
  both drawn at random from one seeded generator each, in data order, so an item's draw does not depend on which
  conditions run;
* control items: the original-model control runs on a seeded sample of at most ``cap`` of all items, the general
  control (does the condition lift answers in general?) on at most ``cap`` held-out utility items — retain items
  when the data has no utility split (both kept in data order).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from unpact_mech.attacks.keywords import ItemKeywords, from_word_indices
from unpact_mech.data.text import is_word
from unpact_mech.scoring.tokens import EncodedQA


def random_words(enc: EncodedQA, keywords: ItemKeywords, rng: random.Random) -> ItemKeywords:
    """As many non-keyword words of the question as there are keywords, drawn at random."""
    taken = set(keywords.positions)
    pool = [w.index for w in enc.prompt.words() if is_word(w.text) and not taken.intersection(w.positions)]
    n = min(len(keywords.words), len(pool))
    return from_word_indices(enc, sorted(rng.sample(pool, n)), "random")


def random_positions(enc: EncodedQA, keywords: ItemKeywords, rng: random.Random) -> ItemKeywords:
    """As many non-keyword question token positions as there are keyword tokens, drawn at random (``words``: the
    words those tokens belong to, for the keywords table)."""
    taken = set(keywords.positions)
    pool = [p for p in enc.prompt.question_positions if p not in taken]
    chosen = sorted(rng.sample(pool, min(len(keywords.positions), len(pool))))
    words = [w.text for w in enc.prompt.words() if set(w.positions) & set(chosen)]
    return ItemKeywords(enc.item_id, tuple(words), tuple(chosen), "random_positions")


def random_word_controls(
    encoded: Sequence[EncodedQA], keywords: Sequence[ItemKeywords], seed: int
) -> list[ItemKeywords]:
    """:func:`random_words` for every item (aligned lists), from one generator seeded with ``seed``."""
    rng = random.Random(seed)
    return [random_words(enc, kw, rng) for enc, kw in zip(encoded, keywords)]


def random_position_controls(
    encoded: Sequence[EncodedQA], keywords: Sequence[ItemKeywords], seed: int
) -> list[ItemKeywords]:
    """:func:`random_positions` for every item (aligned lists), from its own generator (``seed + 2``)."""
    rng = random.Random(seed + 2)
    return [random_positions(enc, kw, rng) for enc, kw in zip(encoded, keywords)]


def control_items(
    everything: Sequence[str],
    general: Sequence[str],
    order: Sequence[str],
    cap: int | None,
    seed: int,
) -> tuple[list[str], list[str]]:
    """``(original-control ids, general-control ids)``: seeded samples of at most ``cap`` of ``everything`` and of
    ``general``, each sorted by position in ``order``; a pool no larger than ``cap`` (or ``cap`` None) is kept
    whole, in its own order."""
    position = {item_id: i for i, item_id in enumerate(order)}
    sample = random.Random(seed + 1)

    def pick(pool: Sequence[str]) -> list[str]:
        if not cap or cap >= len(pool):
            return list(pool)
        return sorted(sample.sample(list(pool), cap), key=position.__getitem__)

    return pick(everything), pick(general)
