"""Regenerate examples/landmarks_people.jsonl: a user-style data file (not a built-in) for the stop-rule example.

Forget = the landmark and famous-people facts of ``builtin:real_facts`` (facts SmolLM2 answers, but not the capitals
the default recipes were tuned on); retain = its other retain-category facts; utility = its held-out utility facts
unchanged. Ids are kept, so every row can be traced back. Run: python scripts/build_example_data.py"""

import json
from pathlib import Path

from unpact_mech import load_items

OUT = Path(__file__).parents[1] / "examples" / "landmarks_people.jsonl"
FORGET_CATEGORIES = ("landmarks", "people")


def main() -> None:
    rows = []
    for item in load_items("builtin:real_facts"):
        category = item.extra["category"]
        if category == "capitals":
            continue
        split = "forget" if category in FORGET_CATEGORIES else item.split
        rows.append(
            {"id": item.id, "question": item.question, "answer": item.answer, "aliases": list(item.aliases),
             "keywords": list(item.keywords), "split": split, "category": category}
        )  # fmt: skip
    rows.sort(key=lambda r: ("forget", "retain", "utility").index(r["split"]))
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = {s: sum(r["split"] == s for r in rows) for s in ("forget", "retain", "utility")}
    print(f"wrote {OUT}: {counts}")


if __name__ == "__main__":
    main()
