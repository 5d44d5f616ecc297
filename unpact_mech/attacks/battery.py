"""The "is it really gone?" battery: the conditions ``unpact recover --attack all`` runs, and the demo's fast subset.

Keyword emphasis is one way forgotten answers come back; the battery adds the other ways the field knows, each a
registered condition (one spec string per row below, options as ``name:key=value``):

========================  =====================================================================================
family                    conditions in the full battery (``battery_specs(model)``)
========================  =====================================================================================
keyword emphasis          every prompt strategy and intervention of :data:`DEFAULT_ATTACKS` (the default list)
``quantization``          ``quantize`` to the source file's own GGUF types (models with a GGUF source; else
                          uniform Q4_1), uniform Q8_0, int8 / int4 round-to-nearest (groups of 32 and 128)
``relearning``            ``relearn_unrelated`` with 1, 5 and 10 AdamW steps on unrelated items;
                          ``relearn_split`` (two folds of the forget items, cross-fitted)
``latent_readout``        ``logit_lens`` (answer top-1 at any layer before the last; + the depth curve)
``direction_ablation``    ``ablate_direction`` (cross-fitted mean unlearned − original direction projected out;
                          its random-direction control runs in the control arm)
``few_shot``              1, 3 and 5 held-out utility QA pairs as earlier chat turns
``rephrase``              every registered offline rephrasing style
========================  =====================================================================================

``battery_specs(model, fast=True)`` is the demo's subset: one condition per family, the cheap settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM

#: The word ``unpact recover --attack`` takes for the full battery.
ALL = "all"
#: ... and for the battery without the keyword-emphasis conditions (the 19 beyond emphasis).
BEYOND = "battery"
#: ... and for the keyword-emphasis conditions alone (:data:`~unpact_mech.attacks.DEFAULT_ATTACKS`: the 7 prompt
#: strategies and 4 activation interventions, the suite of the paper's finding 2).
EMPHASIS = "emphasis"
#: The words :func:`expand_specs` expands (never registered attack names).
WORDS = (ALL, BEYOND, EMPHASIS)


def quantize_specs(model: "HookedLM", *, fast: bool = False) -> list[str]:
    """The quantization conditions: the source grid where the model has one (else uniform Q4_1), then the uniform
    grids (the fast subset: the first two)."""
    from unpact_mech.attacks.quantize import source_gguf_types

    try:
        source_gguf_types(model)
        first = "quantize:scheme=source"
    except InputError:
        first = "quantize:scheme=q4_1"
    rest = [
        "quantize:scheme=int4", "quantize:scheme=q8_0", "quantize:scheme=int8", "quantize:scheme=int4,group_size=128",
    ]  # fmt: skip
    return [first, *rest[: 1 if fast else None]]


def battery_specs(model: "HookedLM", *, fast: bool = False) -> list[str]:
    """Spec strings of the full battery for ``model`` (see the module docstring); ``fast``: the demo's subset
    without the keyword-emphasis conditions (the demo runs those as its own stage)."""
    if fast:
        return [
            *quantize_specs(model, fast=True), "relearn_unrelated:steps=5", "relearn_split", "logit_lens",
            "ablate_direction", "few_shot:shots=3", "rephrase",
        ]  # fmt: skip
    from unpact_mech.attacks import DEFAULT_ATTACKS
    from unpact_mech.attacks.context import REPHRASINGS

    return [
        *DEFAULT_ATTACKS, *quantize_specs(model),
        *(f"relearn_unrelated:steps={k}" for k in (1, 5, 10)), "relearn_split", "logit_lens", "ablate_direction",
        *(f"few_shot:shots={k}" for k in (1, 3, 5)), *(f"rephrase:style={s}" for s in REPHRASINGS),
    ]  # fmt: skip


def expand_specs(specs: list[str], model: "HookedLM") -> list[str]:
    """``all`` -> the full battery for ``model``; ``battery`` -> the same without the keyword-emphasis conditions;
    ``emphasis`` -> the keyword-emphasis conditions alone; other specs pass through in order (duplicates are the
    registry's error)."""
    from unpact_mech.attacks import DEFAULT_ATTACKS

    out: list[str] = []
    for spec in specs:
        if spec == ALL:
            out += battery_specs(model)
        elif spec == BEYOND:
            out += [s for s in battery_specs(model) if s not in DEFAULT_ATTACKS]
        elif spec == EMPHASIS:
            out += list(DEFAULT_ATTACKS)
        else:
            out.append(spec)
    return out
