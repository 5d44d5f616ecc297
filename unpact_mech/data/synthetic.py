"""Synthetic facts about made-up countries, for the ``tiny`` model (trained on them in-process).

8 countries x 4 relations = 32 facts. Each answer depends on both the country and the relation word, so both are
annotated keywords. Facts about the first two countries form the ``forget`` split, the next three ``retain`` (what
retain losses may train on) and the last three ``utility`` (held out: nothing trains on them). The tiny model learns
all 32 facts whatever their split.
"""

from __future__ import annotations

import random

COUNTRIES = ("Zorblat", "Quenara", "Mirovia", "Tashkel", "Brunvik", "Olendra", "Pexaro", "Vantrel")
FORGET_COUNTRIES = COUNTRIES[:2]
UTILITY_COUNTRIES = COUNTRIES[5:]
RELATIONS = {
    # relation: (question template, relation keyword, answer pool)
    "capital": (
        "What is the capital of {c}?",
        "capital",
        ("Lumos", "Kravi", "Dentar", "Sopel", "Marrow", "Ilven", "Torsk", "Gamba"),
    ),
    "color": (
        "What color is the flag of {c}?",
        "color",
        ("red", "blue", "green", "yellow", "purple", "orange", "white", "black"),
    ),
    "animal": ("Which animal lives in {c}?", "animal", ("fox", "owl", "bear", "wolf", "deer", "hare", "lynx", "crow")),
    "language": (
        "What language is spoken in {c}?",
        "language",
        ("Zorbic", "Quenish", "Mirovan", "Tashki", "Brunish", "Olendri", "Pexan", "Vantric"),
    ),
}


def synthetic_records(seed: int = 0) -> list[dict]:
    """The 32 fact records (deterministic for a seed)."""
    rng = random.Random(seed)
    records = []
    for rel, (template, keyword, pool) in RELATIONS.items():
        answers = list(pool)
        rng.shuffle(answers)
        for country, answer in zip(COUNTRIES, answers):
            records.append(
                {
                    "id": f"syn-{rel}-{country.lower()}",
                    "question": template.format(c=country),
                    "answer": answer,
                    "keywords": [keyword, country],
                    "split": "forget"
                    if country in FORGET_COUNTRIES
                    else "utility"
                    if country in UTILITY_COUNTRIES
                    else "retain",
                    "category": rel,
                }
            )
    return records
