"""``occlusion`` — the unPact score ``C(u) = f(x) - f(x without u)``
(:func:`~unpact_mech.attribution.occlusion.occlusion`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unpact_mech.attribution.methods.base import AttributionMethod, check_positive_int
from unpact_mech.attribution.methods.registry import register_attribution_method
from unpact_mech.attribution.occlusion import check_occlusion_options, occlusion, resolve_baseline_token
from unpact_mech.attribution.occlusion_set import occlusion_items
from unpact_mech.attribution.results import TokenAttribution

if TYPE_CHECKING:
    from collections.abc import Sequence

    from unpact_mech.attribution.units import PreparedItem
    from unpact_mech.models.hooked import HookedLM


@register_attribution_method
@dataclass
class Occlusion(AttributionMethod):
    """``mode``: ``delete`` the unit or ``replace`` it by ``baseline_token`` (id, one-token text, None = pad token);
    ``batching``: ``auto``, ``batched`` or ``packed``; ``batch_size``: variants per forward."""

    name = "occlusion"
    description = "unPact score C(u) = f(x) - f(x without u), the unit deleted or replaced"
    mode: str = "delete"
    baseline_token: int | str | None = None
    batching: str = "auto"
    batch_size: int = 64

    def validate(self) -> None:
        check_occlusion_options(self.mode, self.batching)
        check_positive_int(self.name, "batch_size", self.batch_size)

    def validate_for(self, model: "HookedLM") -> None:
        if self.mode == "replace" and self.baseline_token is not None:
            resolve_baseline_token(model, self.baseline_token)

    def attribute(self, model: "HookedLM", prepared: "PreparedItem", *, level: str, target: str) -> TokenAttribution:
        return occlusion(model, prepared, level=level, target=target, **self.options())

    def attribute_many(
        self, model: "HookedLM", prepared: "Sequence[PreparedItem]", *, level: str, target: str
    ) -> list[TokenAttribution]:
        return occlusion_items(model, prepared, level=level, target=target, **self.options())
