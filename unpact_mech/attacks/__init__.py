"""Recovery conditions ("attacks"): one registry of small objects, each with one way to act.

* :mod:`~unpact_mech.attacks.base` — :class:`Attack` and its three kinds (:class:`PromptAttack`,
  :class:`ActivationAttack`, :class:`ModelAttack`), :class:`AttackEnv`, :class:`Treatment`;
* :mod:`~unpact_mech.attacks.edits` — the generic :func:`edit_at_positions` and the tiny edits;
* :mod:`~unpact_mech.attacks.prompt` / :mod:`~unpact_mech.attacks.activation` — the built-in prompt strategies
  (focus, repeat_keywords, repeat_question, quote, uppercase, keywords_first, neutral) and interventions (scale,
  patch, steer, pasta);
* :mod:`~unpact_mech.attacks.quantize` — ``quantize``, a model transform: the weights rounded to a quantization grid
  (the source GGUF's own types, Q4_1, Q8_0, int8, int4) and back, and :func:`grid_report`;
* :mod:`~unpact_mech.attacks.keywords` — what to emphasise (KeyTokens of the original, annotated keywords);
* :mod:`~unpact_mech.attacks.registry` — :func:`register_attack`, :func:`get_attack` (spec strings).

The recovery experiment (:mod:`unpact_mech.recovery`) runs any of them with controls; ``keyguard`` trains against
some of them. Add one from your own script (docs/recovery.md, "Adding a condition")::

    from unpact_mech.attacks import PromptAttack, register_attack
    register_attack(PromptAttack("hint", "a hint naming the keywords", template="Hint: {keywords}. {question}"))
"""

from unpact_mech.attacks.activation import ACTIVATION_ATTACKS, Pasta, Patch, ResidualEdit, Scale, Steer
from unpact_mech.attacks.base import (
    ActivationAttack,
    Attack,
    AttackEnv,
    ModelAttack,
    Positions,
    PromptAttack,
    Treatment,
    fill_template,
)
from unpact_mech.attacks.edits import Edit, edit_at_positions
from unpact_mech.attacks.keywords import ItemKeywords, select_keywords
from unpact_mech.attacks.prompt import PROMPT_ATTACKS
from unpact_mech.attacks.quantize import Quantize
from unpact_mech.attacks.registry import ATTACKS, attack_names, get_attack, register_attack, resolve_attacks

for _attack in PROMPT_ATTACKS + ACTIVATION_ATTACKS + (Quantize(),):
    register_attack(_attack)

#: Every prompt strategy, then every intervention: the conditions ``unpact recover`` runs by default (model
#: transforms such as ``quantize`` run when named).
DEFAULT_ATTACKS: tuple[str, ...] = tuple(a.name for a in PROMPT_ATTACKS + ACTIVATION_ATTACKS)

__all__ = [
    "ATTACKS",
    "ActivationAttack",
    "Attack",
    "AttackEnv",
    "DEFAULT_ATTACKS",
    "Edit",
    "ItemKeywords",
    "ModelAttack",
    "Pasta",
    "Patch",
    "Positions",
    "PromptAttack",
    "Quantize",
    "ResidualEdit",
    "Scale",
    "Steer",
    "Treatment",
    "attack_names",
    "edit_at_positions",
    "fill_template",
    "get_attack",
    "register_attack",
    "resolve_attacks",
    "select_keywords",
]
