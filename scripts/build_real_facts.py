"""Regenerate unpact_mech/data/builtin/real_facts.jsonl: keep the candidate facts SmolLM2-135M-Instruct answers
correctly under the toolkit's default prompt format (greedy, contains-judge). Run: python scripts/build_real_facts.py"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_fact_candidates import candidates

from unpact_mech import evaluate_items, load_model
from unpact_mech.data.record import QAItem

OUT = Path(__file__).parents[1] / "unpact_mech" / "data" / "builtin" / "real_facts.jsonl"


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for n, (cat, q, a, aliases, kws) in enumerate(candidates()):
        rows.append(
            QAItem(
                f"{cat}-{n:03d}",
                q,
                a,
                tuple(aliases),
                tuple(kws),
                "forget" if cat == "capitals" else "retain",
                {"category": cat},
            )
        )
    model = load_model("smollm2")
    df = evaluate_items(model, rows)
    keep = df[df.correct == 1.0]
    print(df.groupby("category").correct.agg(["mean", "sum", "count"]))
    for _, r in df[df.correct == 0.0].iterrows():
        print("DROP", r.item_id, r.question, "->", r.generation, "| gold", r.answer)
    by_id = {it.id: it for it in rows}
    lines = []
    for i, item_id in enumerate(keep.item_id):
        it = by_id[item_id]
        rec = it.to_record()
        cat = it.extra["category"]
        rec["id"] = f"{cat}-{sum(1 for x in keep.item_id[:i] if by_id[x].extra['category'] == cat) + 1:02d}"
        lines.append(json.dumps(rec, ensure_ascii=False))
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"kept {len(lines)} of {len(rows)} -> {OUT}")


if __name__ == "__main__":
    main()
