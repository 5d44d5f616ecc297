"""Layer-by-layer recovery ablation: where does activation emphasis bring forgotten answers back?

For each intervention of the attack registry (default ``patch`` from the original and ``scale`` by a factor), each
position group and each layer L, the intervention is applied at
``single`` = {L} or ``cumulative`` = {0, ..., L}, and the recovery rate is measured on the eligible forget items
(original right, unlearned wrong). Also reported: the share of those items whose gold first token is top-1 and
the mean change of the gold answer's LP. Every point is one ``evaluate_items`` call (greedy + teacher-forced).

Position groups: ``keywords`` (the keyword tokens), ``non_keywords`` (every other question token — usually MORE
tokens than the keywords), ``random_non_keywords`` (a seeded random subset of the other question tokens of the SAME
size as the keyword tokens: the size-matched control; without it "non-keywords recover more" is confounded with
"more positions recover more") and ``last_token`` (the last prompt position).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from unpact_mech.attacks import Attack, AttackEnv, ItemKeywords, get_attack
from unpact_mech.distributed import evaluate_items_sharded
from unpact_mech.errors import InputError
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.scoring.evaluate import evaluate_items
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS
from unpact_mech.scoring.tokens import EncodedQA, encode_item
from unpact_mech.utils import one_or_many, progress_bar

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

POSITION_GROUPS = ("keywords", "non_keywords", "random_non_keywords", "last_token")
SWEEP_MODES = ("single", "cumulative")
COLUMNS = ["intervention", "group", "mode", "layer", "layers", "recovery_rate", "top1_rate", "mean_logprob_gain", "n"]


@dataclass
class SweepConfig:
    """``interventions``: activation attacks (registered names, spec strings such as ``scale:factor=3``, or objects);
    the sweep sets their ``layers``."""

    interventions: Sequence["str | Attack"] = ("patch", "scale")
    groups: Sequence[str] = POSITION_GROUPS
    modes: Sequence[str] = SWEEP_MODES
    layers: Sequence[int] | None = None  # None: every layer up to 10 points, evenly spaced
    judge: str = "contains"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = EVAL_BATCH_SIZE
    seed: int = 0  # draws the random_non_keywords subsets
    #: each process of a multi-process launch evaluates its share of the items of every point (all processes must run
    #: the same sweep; :mod:`unpact_mech.distributed`); no effect on one process
    shard: bool = False

    def __post_init__(self) -> None:  # one name / one layer is a list of one
        self.interventions = one_or_many(self.interventions) or ()
        self.groups = one_or_many(self.groups) or ()
        self.modes = one_or_many(self.modes) or ()
        self.layers = one_or_many(self.layers)


def default_sweep_layers(n_layers: int, points: int = 10) -> list[int]:
    """Evenly spaced layers including the first and the last (all layers if there are few)."""
    if n_layers <= points:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / (points - 1)) for i in range(points)})


def points_per_intervention(cfg: SweepConfig, n_layers: int) -> int:
    """Evaluations of one intervention in a sweep: one per group x mode x layer."""
    layers = cfg.layers if cfg.layers is not None else default_sweep_layers(n_layers)
    return len(cfg.groups) * len(cfg.modes) * len(layers)


def sweep_points(cfg: SweepConfig, n_layers: int) -> int:
    """Evaluations of a sweep (one per intervention x group x mode x layer), besides its one baseline."""
    return len(cfg.interventions) * points_per_intervention(cfg, n_layers)


def sweep_size(cfg: SweepConfig, n_layers: int, n_items: int) -> tuple[int, int, float]:
    """``(evaluations, answers, weighted answers)`` of a sweep over ``n_items`` items, its baseline included (none
    without items); the weighted answers count each by its intervention's
    :attr:`~unpact_mech.attacks.base.Attack.cost` (a recovery plan's time estimate)."""
    if not n_items:
        return 0, 0, 0.0
    per_attack = points_per_intervention(cfg, n_layers)
    costs = [get_attack(spec, kind="intervention").cost for spec in cfg.interventions]
    points = per_attack * len(costs)
    return points + 1, (points + 1) * n_items, (per_attack * sum(costs) + 1) * n_items


def position_groups(enc: EncodedQA, keywords: ItemKeywords, rng: random.Random) -> dict[str, tuple[int, ...]]:
    """Position sets of one item: ``keywords``, ``non_keywords`` (other question tokens), ``random_non_keywords``
    (as many of those as there are keyword tokens, drawn with ``rng``), ``last_token``."""
    kw = set(keywords.positions)
    others = [p for p in enc.prompt.question_positions if p not in kw]
    return {
        "keywords": tuple(sorted(kw)),
        "non_keywords": tuple(others),
        "random_non_keywords": tuple(sorted(rng.sample(others, min(len(kw), len(others))))),
        "last_token": (len(enc.prompt) - 1,),
    }


def layer_sweep(
    original: "HookedLM",
    unlearned: "HookedLM",
    items: Sequence["QAItem"],
    keywords: Sequence[ItemKeywords],
    config: SweepConfig | None = None,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Recovery per (intervention, group, mode, layer) on ``items`` (pass the eligible forget items)."""
    cfg = config or SweepConfig()
    for g in cfg.groups:
        if g not in POSITION_GROUPS:
            raise InputError(f"unknown position group {g!r}; choose from: {', '.join(POSITION_GROUPS)}")
    for m in cfg.modes:
        if m not in SWEEP_MODES:
            raise InputError(f"unknown sweep mode {m!r}; choose from: {', '.join(SWEEP_MODES)}")
    attacks = [get_attack(name, kind="intervention") for name in cfg.interventions]
    layers = list(cfg.layers) if cfg.layers is not None else default_sweep_layers(unlearned.shape.n_layers)
    if not items:
        return pd.DataFrame(columns=COLUMNS)
    encoded = [encode_item(original, it) for it in items]
    rng = random.Random(cfg.seed)
    groups = [position_groups(enc, kw, rng) for enc, kw in zip(encoded, keywords)]
    # data-fitted interventions (steer) fit on these items, cross-fitted: an item's direction comes from other folds
    env = AttackEnv(
        original, unlearned, {e.item_id: e for e in encoded}, {it.id: kw for it, kw in zip(items, keywords)},
        tuple(it.id for it in items), cfg.batch_size, items={it.id: it for it in items}, seed=cfg.seed,
    )  # fmt: skip
    evaluate = evaluate_items_sharded if cfg.shard else evaluate_items
    base = evaluate(
        unlearned, items, judge=cfg.judge, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False
    )
    rows = []
    bar = progress_bar(total=sweep_points(cfg, unlearned.shape.n_layers), desc="layer ablation", enabled=progress)
    for attack in attacks:
        for group in cfg.groups:
            positions = [list(g[group]) for g in groups]
            for mode in cfg.modes:
                for layer in layers:
                    chosen = (layer,) if mode == "single" else tuple(range(layer + 1))
                    point = attack.configure(layers=chosen).resolve(unlearned)
                    df = evaluate(
                        unlearned,
                        items,
                        judge=cfg.judge,
                        max_new_tokens=cfg.max_new_tokens,
                        batch_size=cfg.batch_size,
                        interventions=point.interventions(positions, env),
                        progress=False,
                    )
                    rows.append(
                        {
                            "intervention": attack.name,
                            "group": group,
                            "mode": mode,
                            "layer": layer,
                            "layers": point.label,
                            "recovery_rate": float(df["correct"].mean()),
                            "top1_rate": float((df["rank"] == 0).mean()),
                            "mean_logprob_gain": float((df["logprob"] - base["logprob"]).mean()),
                            "n": len(df),
                        }
                    )
                    bar.update()
    bar.close()
    return pd.DataFrame(rows, columns=COLUMNS)
