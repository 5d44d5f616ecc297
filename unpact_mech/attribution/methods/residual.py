"""``residual`` — direct logit attribution of every residual component, and the logit lens
(:func:`~unpact_mech.attribution.residual.residual_contributions`); no token view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unpact_mech.attribution.methods.base import AttributionMethod
from unpact_mech.attribution.methods.registry import register_attribution_method
from unpact_mech.attribution.residual import residual_contributions
from unpact_mech.attribution.results import ResidualContributions
from unpact_mech.attribution.targets import get_target

if TYPE_CHECKING:
    from unpact_mech.attribution.units import PreparedItem
    from unpact_mech.models.hooked import HookedLM


@register_attribution_method
@dataclass
class Residual(AttributionMethod):
    """No options: every component of every layer."""

    name = "residual"
    description = "direct logit attribution of embeddings + each layer's attn/mlp output; logit lens"
    layer_view = True

    def attribute(
        self, model: "HookedLM", prepared: "PreparedItem", *, level: str, target: str
    ) -> ResidualContributions:
        return residual_contributions(model, prepared, target=target)

    def summarize(self, results: Sequence[ResidualContributions], *, target: str) -> dict[str, Any]:
        return {"readout": get_target(target).readout_description} if results else {}
