"""Recovery conditions ("attacks"): one registry of small objects, each with one way to act.

* :mod:`~unpact_mech.attacks.base` — :class:`Attack` and its three kinds (:class:`PromptAttack`,
  :class:`ActivationAttack`, :class:`ModelAttack`), :class:`AttackEnv`, :class:`Treatment`;
* :mod:`~unpact_mech.attacks.edits` — the generic :func:`edit_at_positions` and the tiny edits;
* :mod:`~unpact_mech.attacks.prompt` / :mod:`~unpact_mech.attacks.activation` — the built-in prompt strategies
  (focus, repeat_keywords, repeat_question, quote, uppercase, keywords_first, neutral) and interventions (scale,
  patch, steer, pasta);
* :mod:`~unpact_mech.attacks.quantize` — ``quantize``, a model transform: the weights rounded to a quantization grid
  (the source GGUF's own types, Q4_1, Q8_0, int8, int4) and back, and :func:`grid_report`;
* :mod:`~unpact_mech.attacks.relearn` — ``relearn_unrelated`` and ``relearn_split``: a few AdamW steps on unrelated
  items, or on the other fold of the forget items (cross-fitted; the fictional-facts control);
* :mod:`~unpact_mech.attacks.latent` — ``logit_lens``, a read-out: the answer's first token at every layer, and the
  depth curve of residual patching between the models;
* :mod:`~unpact_mech.attacks.direction` — ``ablate_direction``: the cross-fitted mean unlearned − original residual
  direction projected out at every position (its control: a random direction of the same norm);
* :mod:`~unpact_mech.attacks.context` — ``few_shot`` (held-out QA pairs as earlier turns) and ``rephrase`` (offline
  rephrasing templates, a registry of styles);
* :mod:`~unpact_mech.attacks.battery` — which conditions ``--attack all`` and the demo's battery stage run;
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
    ReadoutAttack,
    Treatment,
    fill_template,
)
from unpact_mech.attacks.context import CONTEXT_ATTACKS, FewShot, Rephrase, register_rephrasing
from unpact_mech.attacks.direction import DIRECTION_ATTACKS, AblateDirection
from unpact_mech.attacks.edits import Edit, edit_at_positions
from unpact_mech.attacks.keywords import ItemKeywords, select_keywords
from unpact_mech.attacks.latent import LATENT_ATTACKS, LogitLens
from unpact_mech.attacks.prompt import PROMPT_ATTACKS
from unpact_mech.attacks.quantize import Quantize
from unpact_mech.attacks.registry import ATTACKS, attack_names, get_attack, register_attack, resolve_attacks
from unpact_mech.attacks.relearn import RELEARN_ATTACKS, RelearnSplit, RelearnUnrelated

#: The "is it gone?" battery beyond keyword emphasis, in the order ``--attack all`` runs them.
BATTERY_ATTACKS = (Quantize(), *RELEARN_ATTACKS, *LATENT_ATTACKS, *DIRECTION_ATTACKS, *CONTEXT_ATTACKS)
for _attack in PROMPT_ATTACKS + ACTIVATION_ATTACKS + BATTERY_ATTACKS:
    register_attack(_attack)

#: Every prompt strategy, then every intervention: the keyword-emphasis conditions ``unpact recover`` runs by default
#: (the battery's conditions run when named, or with ``--attack all``).
DEFAULT_ATTACKS: tuple[str, ...] = tuple(a.name for a in PROMPT_ATTACKS + ACTIVATION_ATTACKS)

__all__ = [
    "ATTACKS",
    "AblateDirection",
    "ActivationAttack",
    "BATTERY_ATTACKS",
    "FewShot",
    "LogitLens",
    "ReadoutAttack",
    "RelearnSplit",
    "RelearnUnrelated",
    "Rephrase",
    "register_rephrasing",
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
