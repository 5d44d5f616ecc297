"""The registry of recovery conditions: name -> one configured :class:`~unpact_mech.attacks.base.Attack` object.

``register_attack(obj)`` adds an attack (from any script: nothing in the package changes); ``get_attack(spec)``
returns it, configured by a spec string ``name[:key=value,...]`` — e.g. ``scale:factor=3,layers=0-9``,
``pasta:other_weight=0.05,layers=10-19,heads=0+4`` (``a-b`` ranges and ``+`` lists for integer options).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from unpact_mech.attacks.base import KIND_NOUNS, Attack, PromptAttack
from unpact_mech.errors import InputError
from unpact_mech.syntax import parse_int_list
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

ATTACKS: dict[str, Attack] = {}


def register_attack(attack: Attack) -> Attack:
    """Add ``attack`` under its ``name`` (names are unique; registering the same object twice is harmless)."""
    if not isinstance(attack, Attack):
        raise TypeError(f"register_attack takes an Attack object, got {type(attack).__name__}")
    if attack.name in ATTACKS and ATTACKS[attack.name] is not attack:
        raise ValueError(f"attack {attack.name!r} is already registered")
    if ":" in attack.name or "," in attack.name or not attack.name.strip():
        raise ValueError(f"attack name {attack.name!r} must be non-empty without ':' or ','")
    ATTACKS[attack.name] = attack
    return attack


def attack_names(kind: str | None = None) -> list[str]:
    """Registered names, in registration order (only those of ``kind`` if given)."""
    return [n for n, a in ATTACKS.items() if kind is None or a.kind == kind]


def _convert(attack: Attack, key: str, text: str) -> Any:
    default = getattr(attack, key)
    if key in ("layers", "heads") or isinstance(default, tuple):
        return parse_int_list(text)
    if isinstance(default, bool):
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    if isinstance(default, str):
        return text
    if isinstance(default, int):
        return int(text)
    return float(text)


def get_attack(spec: "str | Attack", *, kind: str | None = None) -> Attack:
    """The registered attack named by ``spec`` (``name`` or ``name:key=value,...``), configured; an Attack object
    passes through. ``kind`` restricts the choice (e.g. ``"strategy"`` for prompt strategies). Unknown names,
    options or values raise :class:`InputError` naming the choices."""
    if isinstance(spec, Attack):
        attack = spec
    else:
        name, _, rest = str(spec).partition(":")
        noun = KIND_NOUNS.get(kind or "", "attack")
        if name not in ATTACKS or (kind is not None and ATTACKS[name].kind != kind):
            raise InputError(f"unknown {noun} {name!r}; choose from: {', '.join(attack_names(kind))}")
        attack = ATTACKS[name]
        options: dict[str, Any] = {}
        for part in filter(None, rest.split(",")):
            key, eq, value = part.partition("=")
            if not eq:
                raise InputError(f"{noun} {spec!r}: expected key=value, got {part!r}")
            if key not in attack.options:
                valid = ", ".join(attack.options) or "none"
                raise InputError(f"{noun} {spec!r}: unknown option {key!r} (it takes: {valid})")
            try:
                options[key] = _convert(attack, key, value)
            except ValueError:
                raise InputError(f"{noun} {spec!r}: bad value for {key}: {value!r}") from None
        attack = attack.configure(**options)
    if kind is not None and attack.kind != kind:
        raise InputError(f"{attack.name!r} is a {attack.kind_noun}, not a {KIND_NOUNS.get(kind, kind)}")
    return attack


def resolve_attacks(
    specs: "str | Attack | Sequence[str | Attack]",
    model: "HookedLM",
    templates: Mapping[str, str] | None = None,
) -> list[Attack]:
    """Look up, configure and resolve every spec against ``model`` (one string or object counts as one spec);
    ``templates`` overrides prompt templates by name. Raises :class:`InputError` before any work."""
    items = list(one_or_many(specs) or ())
    out = []
    for spec in items:
        attack = get_attack(spec).resolve(model)
        template = (templates or {}).get(attack.name)
        if template and isinstance(attack, PromptAttack):
            attack = attack.with_template(template)
        out.append(attack)
    labels = [a.label for a in out]
    duplicated = sorted({x for x in labels if labels.count(x) > 1})
    if duplicated:
        raise InputError(f"condition {duplicated[0]!r} is listed twice")
    return out


def option_fields(attack: Attack) -> dict[str, Any]:
    """The attack's configurable options and their current values."""
    return {f.name: getattr(attack, f.name) for f in dataclasses.fields(attack) if f.name in attack.options}
