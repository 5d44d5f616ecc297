"""``attention`` — direct contribution per (layer, head, source position)
(:func:`~unpact_mech.attribution.attention_paths.attention_paths`); its token view sums over layers and heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Any

from unpact_mech.attribution.attention_paths import attention_paths, check_layers, source_attribution
from unpact_mech.attribution.methods.base import AttributionMethod
from unpact_mech.attribution.methods.registry import register_attribution_method
from unpact_mech.attribution.results import AttentionPaths, TokenAttribution
from unpact_mech.attribution.targets import get_target
from unpact_mech.errors import InputError
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    from unpact_mech.attribution.units import PreparedItem
    from unpact_mech.models.hooked import HookedLM


@register_attribution_method
@dataclass
class Attention(AttributionMethod):
    """``layers``: the layers whose heads are attributed (None = all)."""

    name = "attention"
    description = "direct contribution per layer/head/source position"
    head_view = True
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:  # layers=3 is the one layer 3
        self.layers = one_or_many(self.layers)

    def validate(self) -> None:
        layers = self.layers
        if layers is not None and not all(isinstance(x, Integral) and not isinstance(x, bool) for x in layers):
            raise InputError(f"attribution method {self.name}: layers must be a list of layer indices, got {layers!r}")

    def validate_for(self, model: "HookedLM") -> None:
        check_layers(model, self.layers)

    def attribute(self, model: "HookedLM", prepared: "PreparedItem", *, level: str, target: str) -> AttentionPaths:
        return attention_paths(model, prepared, target=target, layers=self.layers)

    def token_view(self, result: AttentionPaths, prepared: "PreparedItem", *, level: str) -> TokenAttribution:
        """``C`` summed over the selected layers and all heads, per question unit."""
        return source_attribution(result, prepared, level)

    def summarize(self, results: Sequence[AttentionPaths], *, target: str) -> dict[str, Any]:
        return {"readout": get_target(target).readout_description} if results else {}
