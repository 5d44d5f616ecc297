"""Controls of the recovery experiment: random non-keyword words, and the seeded samples of control items.

* random words: per item, as many non-keyword words of the question as it has keywords, drawn at random (seeded;
  one generator drawn in data order, so the draw of an item does not depend on which conditions run);
* control items: the original-model control runs on a seeded sample of at most ``cap`` forget + retain items, the
  retain control on at most ``cap`` retain items (both kept in data order).
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


def random_word_controls(
    encoded: Sequence[EncodedQA], keywords: Sequence[ItemKeywords], seed: int
) -> list[ItemKeywords]:
    """:func:`random_words` for every item (aligned lists), from one generator seeded with ``seed``."""
    rng = random.Random(seed)
    return [random_words(enc, kw, rng) for enc, kw in zip(encoded, keywords)]


def control_items(
    everything: Sequence[str],
    retain: Sequence[str],
    order: Sequence[str],
    cap: int | None,
    seed: int,
) -> tuple[list[str], list[str]]:
    """``(original-control ids, retain-control ids)``: seeded samples of at most ``cap`` of ``everything`` and of
    ``retain``, each sorted by position in ``order``; a pool no larger than ``cap`` (or ``cap`` None) is kept whole,
    in its own order."""
    position = {item_id: i for i, item_id in enumerate(order)}
    sample = random.Random(seed + 1)

    def pick(pool: Sequence[str]) -> list[str]:
        if not cap or cap >= len(pool):
            return list(pool)
        return sorted(sample.sample(list(pool), cap), key=position.__getitem__)

    return pick(everything), pick(retain)
