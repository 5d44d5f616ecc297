"""The recovery experiment: apply every condition of the attack registry and ask again, with controls.

For an ORIGINAL and an UNLEARNED model (same tokenizer and architecture) and items with a forget/retain split:

1. keywords per item from one source (:mod:`unpact_mech.attacks.keywords`), aligned on the original prompt;
2. baselines: both models, no attack, every forget and retain item -> the ELIGIBLE forget items (original right,
   unlearned wrong) and the destructive rate on retain items;
3. one loop over the conditions (:class:`~unpact_mech.attacks.base.Attack` objects); each is evaluated in up to four
   arms, all through :meth:`Attack.treat` and :func:`~unpact_mech.scoring.evaluate.evaluate_items`:

   ====================  =================  ==========================  =========================================
   arm                   model              items                       emphasised words
   ====================  =================  ==========================  =========================================
   ``emphasis``          unlearned          eligible forget items       the keywords
   ``random_control``    unlearned          eligible forget items       random non-keyword words (same count);
                                                                        only for conditions that use keywords
   ``original_control``  original           sample of forget + retain   the keywords (skipped where meaningless)
   ``retain_control``    unlearned          sample of retain items      the keywords
   ====================  =================  ==========================  =========================================

   -> one row of ``rates`` per condition (:func:`condition_row`: recovery rate with CI, top-1/top-k, LP gain,
   controls). Items are addressed by their id throughout.

Everything is scored by :func:`~unpact_mech.scoring.evaluate.evaluate_items` (greedy answer + judge, teacher-forced
LP and rank), so "correct" means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from unpact_mech.attacks import DEFAULT_ATTACKS, Attack, AttackEnv, ItemKeywords, resolve_attacks, select_keywords
from unpact_mech.attribution.keytokens import DEFAULT_KEYTOKEN_ALPHA, DEFAULT_KEYTOKEN_BETA
from unpact_mech.data.splits import FORGET, RETAIN, split_items
from unpact_mech.errors import InputError
from unpact_mech.recovery.controls import control_items, random_word_controls
from unpact_mech.recovery.metrics import destructive_rate, eligible_for_recovery, rate
from unpact_mech.scoring.evaluate import evaluate_items
from unpact_mech.scoring.tokens import encode_item

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM

BASELINE = "baseline"


@dataclass
class RecoveryConfig:
    """What a recovery run does. ``attacks``: registered names, spec strings (``scale:factor=3``) or
    :class:`~unpact_mech.attacks.base.Attack` objects, run in this order (one string counts as one condition);
    ``templates``: prompt templates by strategy name."""

    attacks: Sequence["str | Attack"] = DEFAULT_ATTACKS
    templates: dict[str, str] = field(default_factory=dict)
    keyword_source: str = "attribution"
    keytoken_alpha: float = DEFAULT_KEYTOKEN_ALPHA
    keytoken_beta: int = DEFAULT_KEYTOKEN_BETA
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
    ``summary``: headline numbers; ``eligible_ids``: forget items the original knows and the unlearned does not;
    ``attacks``: the resolved conditions, in the order of ``rates``."""

    per_item: pd.DataFrame
    rates: pd.DataFrame
    keywords: pd.DataFrame
    summary: dict[str, Any]
    item_keywords: list[ItemKeywords] = field(default_factory=list)
    eligible_ids: list[str] = field(default_factory=list)
    attacks: list[Attack] = field(default_factory=list)


def recovered_lineage(
    unlearned: "HookedLM", attacks: Sequence[Attack], keyword_source: str, original: str
) -> list[dict[str, Any]]:
    """The unlearned model's lineage extended by the recovery step (no weight changes)."""
    return list(unlearned.lineage) + [
        {
            "role": "recovered",
            "weights_changed": False,
            "attacks": [a.label for a in attacks],
            "keyword_source": keyword_source,
            "original": str(original),
        }
    ]


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


@dataclass(frozen=True)
class Arm:
    """One evaluation of a condition: ``role`` (which model), the item ids, the emphasis label and words."""

    name: str
    role: str
    ids: list[str]
    emphasis: str
    words: dict[str, ItemKeywords]


class _Evaluator:
    """Evaluates (model, items, treatment) and keeps every labelled per-item frame."""

    def __init__(self, models: dict[str, "HookedLM"], items: dict[str, "QAItem"], cfg: RecoveryConfig) -> None:
        self.models, self.items, self.cfg = models, items, cfg
        self.frames: list[pd.DataFrame] = []

    def run(self, arm: Arm, attack: Attack, env: AttackEnv) -> pd.DataFrame | None:
        """Evaluate ``arm`` under ``attack``; None when the arm has no items."""
        if not arm.ids:
            return None
        items = [self.items[i] for i in arm.ids]
        treated = attack.treat(self.models[arm.role], items, [arm.words[i] for i in arm.ids], env)
        encoded = (
            None
            if treated.questions is None
            else [encode_item(treated.model, it, question=q) for it, q in zip(items, treated.questions)]
        )
        df = evaluate_items(
            treated.model,
            items,
            encoded=encoded,
            judge=self.cfg.judge,
            max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size,
            interventions=treated.interventions,
            progress=False,
        )
        return self.keep(df, role=arm.role, kind=attack.kind, condition=attack.label, emphasis=arm.emphasis)

    def baseline(self, role: str, ids: list[str], known: pd.DataFrame | None = None) -> pd.DataFrame:
        """The model's answers without any attack (``known``: an evaluation of these items to reuse)."""
        if known is None:
            items = [self.items[i] for i in ids]
            known = evaluate_items(
                self.models[role],
                items,
                judge=self.cfg.judge,
                max_new_tokens=self.cfg.max_new_tokens,
                batch_size=self.cfg.batch_size,
                progress=False,
            )
        else:
            have = set(known["item_id"])
            missing = [i for i in ids if i not in have]
            if missing:
                raise ValueError(f"original_baseline lacks item {missing[0]!r}")
            known = known.set_index("item_id").loc[ids].reset_index()
        return self.keep(known, role=role, kind=BASELINE, condition="none", emphasis="none").set_index("item_id")

    def keep(self, df: pd.DataFrame, *, role: str, kind: str, condition: str, emphasis: str) -> pd.DataFrame:
        df = df.copy()
        for pos, (col, value) in enumerate(
            (("model", role), ("kind", kind), ("condition", condition), ("emphasis", emphasis)), start=2
        ):
            df.insert(pos, col, value)
        self.frames.append(df)
        return df


def arms(
    attack: Attack,
    cfg: RecoveryConfig,
    eligible: list[str],
    original_control: list[str],
    retain_control: list[str],
    keywords: dict[str, ItemKeywords],
    controls: dict[str, ItemKeywords],
) -> list[Arm]:
    """The arms of one condition (see the module docstring), in the order they are evaluated."""
    out = [Arm("emphasis", "unlearned", eligible, "keywords", keywords)]
    if cfg.controls:
        if attack.uses_keywords:
            out.append(Arm("random_control", "unlearned", eligible, "random", controls))
        if attack.runs_on_original:
            out.append(Arm("original_control", "original", original_control, "keywords", keywords))
        out.append(Arm("retain_control", "unlearned", retain_control, "keywords", keywords))
    return out


def condition_row(
    attack: Attack,
    frames: dict[str, pd.DataFrame | None],
    eligible: list[str],
    base_o: pd.DataFrame,
    base_u: pd.DataFrame,
    cfg: RecoveryConfig,
) -> dict[str, Any]:
    """One ``rates`` row: recovery rate R on the eligible items (under emphasis, with CI), top-1/top-k of the gold
    first token before and after, mean LP gain, and the controls (random-word rate; original-model and retain
    accuracy before -> after on the same items)."""
    row: dict[str, Any] = {"kind": attack.kind, "condition": attack.label}
    emph = frames.get("emphasis")
    e = emph.set_index("item_id").loc[eligible] if emph is not None else base_u.iloc[:0]
    row |= rate(e["correct"].to_numpy(bool), n_boot=cfg.n_boot, seed=cfg.seed).as_dict("recovery_rate")
    before = base_u.loc[eligible] if eligible else base_u.iloc[:0]
    for label, frame in (("before", before), ("after", e)):
        row[f"top1_{label}"] = float((frame["rank"] == 0).mean()) if len(frame) else float("nan")
    for label, frame in (("before", before), ("after", e)):
        row[f"top{cfg.top_k}_{label}"] = float((frame["rank"] < cfg.top_k).mean()) if len(frame) else float("nan")
    gain = e["logprob"].to_numpy() - before["logprob"].to_numpy()
    row["mean_logprob_gain"] = float(gain.mean()) if len(e) else float("nan")
    rand = frames.get("random_control")
    if rand is not None and len(rand):
        row |= rate(rand["correct"].to_numpy(bool), n_boot=cfg.n_boot, seed=cfg.seed).as_dict("random_control_rate")
    for arm, base, prefix in (("original_control", base_o, "original"), ("retain_control", base_u, "retain")):
        frame = frames.get(arm)
        if frame is not None and len(frame):  # before/after on the same (possibly sampled) items
            row[f"{prefix}_accuracy_before"] = float(base.loc[list(frame["item_id"]), "correct"].mean())
            row[f"{prefix}_accuracy_after"] = float(frame["correct"].mean())
    return row


def _item_keywords(
    cfg: RecoveryConfig,
    original: "HookedLM",
    items: Sequence["QAItem"],
    encoded,
    keywords: Sequence[ItemKeywords] | None,
) -> list[ItemKeywords]:
    if keywords is None:
        return select_keywords(
            cfg.keyword_source,
            original,
            items,
            encoded,
            keytoken_alpha=cfg.keytoken_alpha,
            keytoken_beta=cfg.keytoken_beta,
            batch_size=cfg.batch_size,
        )
    if [k.item_id for k in keywords] != [it.id for it in items]:
        raise ValueError("precomputed keywords must be aligned with the items")
    return list(keywords)


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
    """Run every condition of ``config.attacks`` with controls; see the module docstring.

    ``keywords``: precomputed keywords aligned with ``items`` (e.g. KeyTokens computed once for several unlearned
    models); default: from ``config.keyword_source``. ``original_baseline``: the original model's
    :func:`~unpact_mech.scoring.evaluate.evaluate_items` frame of these items with the same judge and answer length
    (reused instead of evaluating the original again)."""
    cfg = config or RecoveryConfig()
    check_compatible(original, unlearned)
    attacks = resolve_attacks(cfg.attacks, unlearned, cfg.templates)
    forget = [it.id for it in split_items(items, FORGET)]
    retain = [it.id for it in split_items(items, RETAIN)]
    if not forget:
        raise InputError("recovery needs items with split 'forget'")
    encoded = [encode_item(original, it) for it in items]
    kw_list = _item_keywords(cfg, original, items, encoded, keywords)
    control_list = random_word_controls(encoded, kw_list, cfg.seed)
    kws = {k.item_id: k for k in kw_list}
    controls = {it.id: c for it, c in zip(items, control_list)}
    original_control, retain_control = control_items(
        forget + retain, retain, [it.id for it in items], cfg.max_control_items, cfg.seed
    )
    evaluator = _Evaluator({"original": original, "unlearned": unlearned}, {it.id: it for it in items}, cfg)

    bar = tqdm(total=2 + len(attacks), desc="recovery", disable=not progress)
    base_o = evaluator.baseline("original", forget + retain, original_baseline)
    bar.update()
    base_u = evaluator.baseline("unlearned", forget + retain)
    bar.update()
    mask = eligible_for_recovery(base_o.loc[forget, "correct"].to_numpy(), base_u.loc[forget, "correct"].to_numpy())
    eligible = [i for i, ok in zip(forget, mask) if ok]
    env = AttackEnv(original, unlearned, {e.item_id: e for e in encoded}, kws, tuple(forget), cfg.batch_size)

    rate_rows = []
    for attack in attacks:
        frames = {
            arm.name: evaluator.run(arm, attack, env)
            for arm in arms(attack, cfg, eligible, original_control, retain_control, kws, controls)
        }
        rate_rows.append(condition_row(attack, frames, eligible, base_o, base_u, cfg))
        bar.update()
    bar.close()

    kw_table = pd.DataFrame(
        [
            {
                "item_id": it.id,
                "split": it.split,
                "source": k.source,
                "keywords": " | ".join(k.words),
                "positions": " ".join(map(str, k.positions)),
                "random_control": " | ".join(c.words),
            }
            for it, k, c in zip(items, kw_list, control_list)
        ]
    )
    summary = _summary(cfg, forget, retain, eligible, base_o, base_u, rate_rows)
    return RecoveryResult(
        pd.concat(evaluator.frames, ignore_index=True),
        pd.DataFrame(rate_rows),
        kw_table,
        summary,
        kw_list,
        eligible,
        attacks,
    )


def _summary(
    cfg: RecoveryConfig,
    forget: list[str],
    retain: list[str],
    eligible: list[str],
    base_o: pd.DataFrame,
    base_u: pd.DataFrame,
    rate_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Headline numbers: counts, baseline accuracies, destructive rate, rate per condition, best condition."""
    summary: dict[str, Any] = {
        "n_forget": len(forget),
        "n_retain": len(retain),
        "n_eligible": len(eligible),
        "original_forget_accuracy": float(base_o.loc[forget, "correct"].mean()),
        "unlearned_forget_accuracy": float(base_u.loc[forget, "correct"].mean()),
        "keyword_source": cfg.keyword_source,
    }
    if retain:
        o, u = base_o.loc[retain, "correct"].to_numpy(), base_u.loc[retain, "correct"].to_numpy()
        summary |= destructive_rate(o, u, n_boot=cfg.n_boot, seed=cfg.seed).as_dict("destructive_rate")
        summary["original_retain_accuracy"] = float(o.mean())
        summary["unlearned_retain_accuracy"] = float(u.mean())
    summary["recovery_rate"] = {r["condition"]: r["recovery_rate"] for r in rate_rows}
    summary["random_control_rate"] = {
        r["condition"]: r.get("random_control_rate") for r in rate_rows if "random_control_rate" in r
    }
    if rate_rows:
        best = max(rate_rows, key=lambda r: -1 if np.isnan(r["recovery_rate"]) else r["recovery_rate"])
        summary["best_condition"] = best["condition"]
        summary["best_recovery_rate"] = best["recovery_rate"]
    return summary
