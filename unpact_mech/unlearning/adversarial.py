"""Adversarial training rows for ``keyguard``: the forget (and retain) items as the recovery attacks present them.

The recovery conditions (:mod:`unpact_mech.attacks`) emphasise an item's keywords by rewriting its prompt (prompt
strategies) or by editing activations at the keyword positions (interventions). :func:`build_attack_pool` turns the
training items into rows that carry the same emphasis, so an unlearning loss can be applied under the attack:

* ``prompt`` rows — a forget item's question rewritten by each training strategy (keywords = the ORIGINAL model's
  KeyTokens, as in recovery), followed by the same teacher-forced context and answer as its plain target;
* ``activation`` rows — a forget item's plain target; the method edits the residual at its keyword positions
  (e.g. the attack registry's ``patch``);
* ``retain_prompt`` rows — a retain item's question rewritten the same way (so the forget loss does not learn
  "an emphasised prompt means forget").

The kind of a row is its :attr:`TrainTarget.source` (``attack:<kind>``). Keywords and positions come from the
attack registry's one keyword source and the scoring package's one alignment rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from unpact_mech.scoring.tokens import encode_item

if TYPE_CHECKING:
    from unpact_mech.attacks.base import PromptAttack
    from unpact_mech.attacks.keywords import ItemKeywords
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.unlearning.targets import TrainTarget

KINDS = ("prompt", "activation", "retain_prompt")


def source(kind: str) -> str:
    """The :attr:`TrainTarget.source` tag of an attack row of ``kind``."""
    return f"attack:{kind}"


@dataclass(frozen=True)
class AttackPool:
    """Attack rows by kind (each a tuple of targets) and the keyword positions of every item id (plain prompt)."""

    rows: dict[str, tuple["TrainTarget", ...]]
    keyword_positions: dict[str, tuple[int, ...]]


def rewritten_target(
    model: "HookedLM", item: "QAItem", target: "TrainTarget", question: str, kind: str
) -> "TrainTarget":
    """``target`` with its prompt replaced by the encoding of ``question`` (context and answer unchanged)."""
    prompt = encode_item(model, item, question=question).prompt
    model.check_length(len(prompt) + len(target.context_ids) + len(target.answer_ids), f"item {item.id!r}")
    return replace(target, prompt=prompt, source=source(kind))


def build_attack_pool(
    model: "HookedLM",
    forget: Sequence[tuple["QAItem", "TrainTarget", "ItemKeywords"]],
    retain: Sequence[tuple["QAItem", "TrainTarget", "ItemKeywords"]],
    strategies: Sequence["PromptAttack"],
) -> AttackPool:
    """Rows of every kind: ``len(forget)·len(strategies)`` prompt rows, ``len(forget)`` activation rows and
    ``len(retain)·len(strategies)`` retain-prompt rows (items without keywords are rewritten with none, as the
    recovery suite does)."""

    def rewrites(triples, kind: str) -> tuple["TrainTarget", ...]:
        return tuple(
            rewritten_target(model, item, target, s.rewrite(item.question, kw.words), kind)
            for item, target, kw in triples
            for s in strategies
        )

    rows = {
        "prompt": rewrites(forget, "prompt"),
        "activation": tuple(replace(target, source=source("activation")) for _, target, _ in forget),
        "retain_prompt": rewrites(retain, "retain_prompt"),
    }
    positions = {kw.item_id: tuple(kw.positions) for triples in (forget, retain) for _, _, kw in triples}
    return AttackPool(rows, positions)
