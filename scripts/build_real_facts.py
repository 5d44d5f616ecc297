"""Regenerate unpact_mech/data/builtin/real_facts.jsonl: keep the candidate facts SmolLM2-135M-Instruct answers
correctly under the toolkit's default prompt format (greedy, contains-judge). Run: python scripts/build_real_facts.py
[--generations PATH.csv] (the optional CSV holds every candidate's generation and verdict, for review).

Splits: ``forget`` = the capitals, ``retain`` = the other original categories (what retain losses train on),
``utility`` = the held-out categories of ``UTILITY_CATEGORIES`` (never trained on). The original forget/retain
candidates are evaluated on their own, exactly as before the utility split existed (the batches are formed by prompt
length, so mixing in new candidates could change their padding), and written first; the utility rows follow."""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_fact_candidates import JUDGE_FALSE_POSITIVES, UTILITY_CATEGORIES, candidates, utility_candidates

from unpact_mech import evaluate_items, load_model
from unpact_mech.data.record import QAItem

OUT = Path(__file__).parents[1] / "unpact_mech" / "data" / "builtin" / "real_facts.jsonl"


def split_of(cat: str) -> str:
    if cat == "capitals":
        return "forget"
    return "utility" if cat in UTILITY_CATEGORIES else "retain"


def to_items(cands, start: int) -> list[QAItem]:
    return [
        QAItem(f"{cat}-{n:03d}", q, a, tuple(aliases), tuple(kws), split_of(cat), {"category": cat})
        for n, (cat, q, a, aliases, kws) in enumerate(cands, start=start)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=Path, help="write every candidate's generation and verdict to this CSV")
    args = ap.parse_args()

    torch.manual_seed(0)
    base = candidates()
    original = to_items(base, 0)
    utility = to_items(utility_candidates(), len(base))
    assert not UTILITY_CATEGORIES & {it.extra["category"] for it in original}, "utility category reused"
    rows = original + utility
    model = load_model("smollm2")
    # Two separate evaluations: the original candidates' batches stay exactly as they were.
    df = pd.concat([evaluate_items(model, original), evaluate_items(model, utility)], ignore_index=True)
    # A judge pass whose generation was reviewed as a wrong statement is not kept (utility candidates only).
    reviewed_out = (df.split == "utility") & df.question.isin(JUDGE_FALSE_POSITIVES) & (df.correct == 1.0)
    df["kept"] = (df.correct == 1.0) & ~reviewed_out
    if args.generations:
        df.to_csv(args.generations, index=False)

    for _, r in df[~df.kept].iterrows():
        why = "DROP (judge pass, reviewed wrong)" if r.correct == 1.0 else "DROP"
        print(why, r.item_id, r.question, "->", r.generation, "| gold", r.answer)
    by_cat = df.groupby("category", sort=False).kept.agg(kept="sum", tried="count")
    by_cat.insert(0, "split", [split_of(c) for c in by_cat.index])
    print(by_cat.astype({"kept": int}).to_string())
    by_split = df.groupby("split", sort=False).kept.agg(kept="sum", tried="count").astype({"kept": int})
    print(by_split.to_string())

    keep = df[df.kept]
    by_id = {it.id: it for it in rows}
    seen: Counter[str] = Counter()
    lines = []
    for item_id in keep.item_id:
        it = by_id[item_id]
        rec = it.to_record()
        cat = it.extra["category"]
        seen[cat] += 1
        rec["id"] = f"{cat}-{seen[cat]:02d}"
        lines.append(json.dumps(rec, ensure_ascii=False))
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"kept {len(lines)} of {len(rows)} -> {OUT}")


if __name__ == "__main__":
    main()
