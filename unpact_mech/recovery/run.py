"""The recovery experiment: emphasise keywords without changing weights and ask the unlearned model again.

For an ORIGINAL and an UNLEARNED model (same tokenizer and architecture) and items with a forget/retain split:

1. keywords per item from one source (:mod:`.keywords`), aligned on the original prompt;
2. baselines: both models, no emphasis, all items -> eligible forget items (original right, unlearned wrong) and
   the destructive rate on retain items;
3. for every prompt strategy and every activation intervention (emphasis on the keywords):
   * recovery rate on the eligible forget items (with a bootstrap CI) and whether the gold answer's first token
     becomes top-1 / enters the top-k;
   * controls: the same emphasis on RANDOM non-keyword words/positions (same count); the same emphasis on the
     ORIGINAL model (its accuracy on all items); the same emphasis on RETAIN items (unlearned accuracy).

Everything is scored by the foundation's :func:`~unpact_mech.scoring.evaluate.evaluate_items` (greedy answer +
judge, teacher-forced LP and rank), so "correct" means the same everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from unpact_mech.errors import InputError
from unpact_mech.recovery.interventions import InterventionSpec, build_factory, resolve, steering_directions
from unpact_mech.recovery.keywords import ItemKeywords, random_words, select_keywords
from unpact_mech.recovery.metrics import destructive_rate, eligible_for_recovery, rate
from unpact_mech.recovery.strategies import DEFAULT_STRATEGIES, get_strategy
from unpact_mech.scoring.evaluate import evaluate_items
from unpact_mech.scoring.tokens import EncodedQA, encode_item

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

DEFAULT_INTERVENTIONS = (InterventionSpec("scale"), InterventionSpec("patch"), InterventionSpec("steer"), InterventionSpec("pasta"))


@dataclass
class RecoveryConfig:
    strategies: Sequence[str] = DEFAULT_STRATEGIES
    templates: dict[str, str] = field(default_factory=dict)
    interventions: Sequence[InterventionSpec] = DEFAULT_INTERVENTIONS
    keyword_source: str = "attribution"
    alpha: float = 0.5
    beta: int = 3
    controls: bool = True
    judge: str = "contains"
    max_new_tokens: int = 12
    batch_size: int = 16
    n_boot: int = 2000
    top_k: int = 5
    seed: int = 0
    max_control_items: int | None = None  # cap (seeded sample) on the original-model and retain controls


@dataclass
class RecoveryResult:
    """``per_item``: one row per (model, condition, emphasis, item); ``rates``: one row per condition;
    ``keywords``: the emphasised words per item (table; ``item_keywords`` the objects, aligned with the items);
    ``summary``: headline numbers; ``eligible_ids``: forget items the original knows and the unlearned does not."""

    per_item: pd.DataFrame
    rates: pd.DataFrame
    keywords: pd.DataFrame
    summary: dict[str, Any]
    item_keywords: list[ItemKeywords] = field(default_factory=list)
    eligible_ids: list[str] = field(default_factory=list)


def recovered_lineage(unlearned: "HookedLM", strategies: Sequence[str], specs: Sequence[InterventionSpec], keyword_source: str, original: str) -> list[dict[str, Any]]:
    """The unlearned model's lineage extended by the recovery step (no weight changes)."""
    return list(unlearned.lineage) + [{
        "role": "recovered", "weights_changed": False, "strategies": list(strategies),
        "interventions": [s.name for s in specs], "keyword_source": keyword_source, "original": str(original),
    }]


def check_compatible(original: "HookedLM", unlearned: "HookedLM") -> None:
    """Original and unlearned must share tokenizer and architecture (else positions and patching are meaningless)."""
    if original.arch.family != unlearned.arch.family or original.shape != unlearned.shape:
        raise InputError(
            f"original ({original.arch.family}, {original.shape.n_layers} layers, d={original.shape.d_model}) and "
            f"unlearned ({unlearned.arch.family}, {unlearned.shape.n_layers} layers, d={unlearned.shape.d_model}) "
            "models have different architectures"
        )
    if original.tokenizer.get_vocab() != unlearned.tokenizer.get_vocab():
        raise InputError("original and unlearned models have different tokenizers")


class _Runner:
    def __init__(self, original, unlearned, items, config: RecoveryConfig, progress: bool) -> None:
        self.o, self.u, self.items, self.cfg, self.progress = original, unlearned, list(items), config, progress
        self.rows: list[pd.DataFrame] = []

    def evaluate(self, model, idx, *, label, kind, condition, emphasis, questions=None, interventions=None):
        """Evaluate ``model`` on items ``idx`` (optionally rewritten / with interventions); keep rows; return them
        (None when ``idx`` is empty)."""
        if not idx:
            return None
        items = [self.items[i] for i in idx]
        encoded = None if questions is None else [encode_item(model, it, question=q) for it, q in zip(items, questions)]
        df = evaluate_items(
            model, items, encoded=encoded, judge=self.cfg.judge, max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size, interventions=interventions, progress=False,
        )
        return self.keep(df, label=label, kind=kind, condition=condition, emphasis=emphasis)

    def keep(self, df: pd.DataFrame, *, label, kind, condition, emphasis) -> pd.DataFrame:
        """Label an evaluation frame (one row per item) and keep it for ``per_item``."""
        df = df.copy()
        df.insert(2, "model", label)
        df.insert(3, "kind", kind)
        df.insert(4, "condition", condition)
        df.insert(5, "emphasis", emphasis)
        self.rows.append(df)
        return df


def _subset_factory(factory, idx: Sequence[int]):
    """Re-index an intervention factory built over all items onto a subset evaluated on its own."""
    if factory is None:
        return None
    from dataclasses import replace

    return lambda layout: factory(replace(layout, items=tuple(idx[i] for i in layout.items)))


def run_recovery(
    original: "HookedLM",
    unlearned: "HookedLM",
    items: Sequence["QAItem"],
    config: RecoveryConfig | None = None,
    *,
    keywords: Sequence[ItemKeywords] | None = None,
    original_baseline: pd.DataFrame | None = None,
    progress: bool = True,
) -> RecoveryResult:
    """Run prompt strategies and activation interventions with controls; see the module docstring.

    ``keywords``: precomputed keywords aligned with ``items`` (e.g. KeyTokens computed once for several
    unlearned models); default: from ``config.keyword_source``. ``original_baseline``: the original model's
    :func:`~unpact_mech.scoring.evaluate.evaluate_items` frame of these items with the same judge and answer
    length (reused instead of evaluating the original again, e.g. once for several unlearned models)."""
    cfg = config or RecoveryConfig()
    check_compatible(original, unlearned)
    strategies = [get_strategy(n, cfg.templates.get(n)) for n in cfg.strategies]
    specs = [resolve(s, unlearned) for s in cfg.interventions]
    forget = [i for i, it in enumerate(items) if it.split == "forget"]
    retain = [i for i, it in enumerate(items) if it.split == "retain"]
    if not forget:
        raise InputError("recovery needs items with split 'forget'")
    run = _Runner(original, unlearned, items, cfg, progress)
    encoded: list[EncodedQA] = [encode_item(original, it) for it in items]
    if keywords is None:
        keywords = select_keywords(
            cfg.keyword_source, original, items, encoded, alpha=cfg.alpha, beta=cfg.beta, batch_size=cfg.batch_size, progress=progress
        )
    elif [k.item_id for k in keywords] != [it.id for it in items]:
        raise ValueError("precomputed keywords must be aligned with the items")
    keywords = list(keywords)
    rng = random.Random(cfg.seed)
    controls = [random_words(enc, kw, rng) for enc, kw in zip(encoded, keywords)]

    n_steps = 2 + len(strategies) + len(specs)
    bar = tqdm(total=n_steps, desc="recovery", disable=not progress)
    everything = forget + retain
    cap = cfg.max_control_items
    sample = random.Random(cfg.seed + 1)
    original_control = sorted(sample.sample(everything, cap)) if cap and cap < len(everything) else everything
    retain_control = sorted(sample.sample(retain, cap)) if cap and cap < len(retain) else retain
    if original_baseline is not None:
        known = original_baseline.set_index("item_id")
        missing = [items[i].id for i in everything if items[i].id not in known.index]
        if missing:
            raise ValueError(f"original_baseline lacks item {missing[0]!r}")
        base_o = run.keep(known.loc[[items[i].id for i in everything]].reset_index(), label="original", kind="baseline",
                          condition="none", emphasis="none").set_index("item_id")
    else:
        base_o = run.evaluate(original, everything, label="original", kind="baseline", condition="none", emphasis="none").set_index("item_id")
    bar.update()
    base_u = run.evaluate(unlearned, everything, label="unlearned", kind="baseline", condition="none", emphasis="none").set_index("item_id")
    bar.update()
    ids = [items[i].id for i in forget]
    eligible_mask = eligible_for_recovery(base_o.loc[ids, "correct"].to_numpy(), base_u.loc[ids, "correct"].to_numpy())
    eligible = [i for i, ok in zip(forget, eligible_mask) if ok]
    eligible_ids = [items[i].id for i in eligible]
    rids = [items[i].id for i in retain]
    destructive = destructive_rate(base_o.loc[rids, "correct"].to_numpy(), base_u.loc[rids, "correct"].to_numpy(), n_boot=cfg.n_boot, seed=cfg.seed) if retain else None

    rate_rows: list[dict[str, Any]] = []

    def summarise(kind: str, name: str, emph, rand, orig, ret) -> None:
        """One rates row; ``emph`` holds the eligible items under emphasis (None if there are none)."""
        row: dict[str, Any] = {"kind": kind, "condition": name}
        e = emph.set_index("item_id").loc[eligible_ids] if emph is not None else base_u.iloc[:0]
        # e holds only eligible items (original right, unlearned wrong): R is their accuracy under emphasis
        row |= rate(e["correct"].to_numpy(bool), n_boot=cfg.n_boot, seed=cfg.seed).as_dict("recovery_rate")
        before = base_u.loc[eligible_ids] if eligible_ids else base_u.iloc[:0]
        row["top1_before"] = float((before["rank"] == 0).mean()) if len(before) else float("nan")
        row["top1_after"] = float((e["rank"] == 0).mean()) if len(e) else float("nan")
        row[f"top{cfg.top_k}_before"] = float((before["rank"] < cfg.top_k).mean()) if len(before) else float("nan")
        row[f"top{cfg.top_k}_after"] = float((e["rank"] < cfg.top_k).mean()) if len(e) else float("nan")
        row["mean_logprob_gain"] = float((e["logprob"].to_numpy() - before["logprob"].to_numpy()).mean()) if len(e) else float("nan")
        if rand is not None and len(rand):
            row |= rate(rand["correct"].to_numpy(bool), n_boot=cfg.n_boot, seed=cfg.seed).as_dict("random_control_rate")
        if orig is not None and len(orig):  # before/after on the same (possibly sampled) items
            row["original_accuracy_before"] = float(base_o.loc[list(orig["item_id"]), "correct"].mean())
            row["original_accuracy_after"] = float(orig["correct"].mean())
        if ret is not None and len(ret):
            row["retain_accuracy_before"] = float(base_u.loc[list(ret["item_id"]), "correct"].mean())
            row["retain_accuracy_after"] = float(ret["correct"].mean())
        rate_rows.append(row)

    # -- prompt strategies --------------------------------------------------------------------------------------
    for strategy in strategies:
        rewrite = lambda idx, kws: [strategy.rewrite(items[i].question, kws[i].words) for i in idx]  # noqa: E731
        emph = run.evaluate(unlearned, eligible, label="unlearned", kind="strategy", condition=strategy.name, emphasis="keywords", questions=rewrite(eligible, keywords))
        rand = orig = ret = None
        if cfg.controls:
            if strategy.uses_keywords:
                rand = run.evaluate(unlearned, eligible, label="unlearned", kind="strategy", condition=strategy.name, emphasis="random", questions=rewrite(eligible, controls))
            orig = run.evaluate(original, original_control, label="original", kind="strategy", condition=strategy.name, emphasis="keywords", questions=rewrite(original_control, keywords))
            ret = run.evaluate(unlearned, retain_control, label="unlearned", kind="strategy", condition=strategy.name, emphasis="keywords", questions=rewrite(retain_control, keywords))
        summarise("strategy", strategy.name, emph, rand, orig, ret)
        bar.update()

    # -- activation interventions -------------------------------------------------------------------------------
    kw_pos = [list(k.positions) for k in keywords]
    rnd_pos = [list(k.positions) for k in controls]
    for spec in specs:
        directions = None
        if spec.method == "steer":
            directions = steering_directions(original, unlearned, [encoded[i].prompt.ids for i in forget], [kw_pos[i] for i in forget], spec.layers, spec.hook, cfg.batch_size)

        def factory(positions, idx, spec=spec, directions=directions):
            return _subset_factory(build_factory(spec, positions, source=original, directions=directions), idx)

        emph = run.evaluate(unlearned, eligible, label="unlearned", kind="intervention", condition=spec.name, emphasis="keywords", interventions=factory(kw_pos, eligible))
        rand = orig = ret = None
        if cfg.controls:
            rand = run.evaluate(unlearned, eligible, label="unlearned", kind="intervention", condition=spec.name, emphasis="random", interventions=factory(rnd_pos, eligible))
            if spec.method != "patch":  # patching the original from itself is the identity
                orig = run.evaluate(original, original_control, label="original", kind="intervention", condition=spec.name, emphasis="keywords", interventions=factory(kw_pos, original_control))
            ret = run.evaluate(unlearned, retain_control, label="unlearned", kind="intervention", condition=spec.name, emphasis="keywords", interventions=factory(kw_pos, retain_control))
        summarise("intervention", spec.name, emph, rand, orig, ret)
        bar.update()
    bar.close()

    per_item = pd.concat(run.rows, ignore_index=True)
    rates = pd.DataFrame(rate_rows)
    kw_table = pd.DataFrame([
        {"item_id": k.item_id, "split": items[i].split, "source": k.source, "keywords": " | ".join(k.words),
         "positions": " ".join(map(str, k.positions)), "random_control": " | ".join(c.words)}
        for i, (k, c) in enumerate(zip(keywords, controls))
    ])
    summary: dict[str, Any] = {
        "n_forget": len(forget),
        "n_retain": len(retain),
        "n_eligible": len(eligible),
        "original_forget_accuracy": float(base_o.loc[ids, "correct"].mean()),
        "unlearned_forget_accuracy": float(base_u.loc[ids, "correct"].mean()),
        "keyword_source": cfg.keyword_source,
    }
    if destructive is not None:
        summary |= destructive.as_dict("destructive_rate")
        summary["original_retain_accuracy"] = float(base_o.loc[rids, "correct"].mean())
        summary["unlearned_retain_accuracy"] = float(base_u.loc[rids, "correct"].mean())
    summary["recovery_rate"] = {r["condition"]: r["recovery_rate"] for r in rate_rows}
    summary["random_control_rate"] = {r["condition"]: r.get("random_control_rate") for r in rate_rows if "random_control_rate" in r}
    if rate_rows:
        best = max(rate_rows, key=lambda r: -1 if np.isnan(r["recovery_rate"]) else r["recovery_rate"])
        summary["best_condition"] = best["condition"]
        summary["best_recovery_rate"] = best["recovery_rate"]
    return RecoveryResult(per_item, rates, kw_table, summary, keywords, eligible_ids)
