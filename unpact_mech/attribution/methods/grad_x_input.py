"""``grad_x_input`` — gradient x input at the token embeddings, and gradient x activation at ``hooks``
(:mod:`unpact_mech.attribution.gradients`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unpact_mech.attribution.gradients import grad_x_activation, grad_x_input
from unpact_mech.attribution.methods.base import AttributionMethod
from unpact_mech.attribution.methods.registry import register_attribution_method
from unpact_mech.attribution.results import ActivationAttribution, TokenAttribution
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import parse_hook
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    from unpact_mech.attribution.units import PreparedItem
    from unpact_mech.models.hooked import HookedLM


@register_attribution_method
@dataclass
class GradXInput(AttributionMethod):
    """``a_p = (df/de_p) . e_p``; ``hooks``: hook names where gradient x activation ``(df/dh) . h`` is also computed
    (one :class:`ActivationAttribution` per item in ``AttributionRun.extras``)."""

    name = "grad_x_input"
    description = "gradient x input embedding (with hooks: also gradient x activation there)"
    hooks: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # hooks="blocks.0.hook_resid_post" is the one hook
        self.hooks = one_or_many(self.hooks) or ()

    def validate(self) -> None:
        if not all(isinstance(h, str) for h in self.hooks):
            raise InputError(f"attribution method {self.name}: hooks must be a list of hook names, got {self.hooks!r}")

    def validate_for(self, model: "HookedLM") -> None:
        for hook in self.hooks:
            parse_hook(hook, model.shape.n_layers)

    def attribute(self, model: "HookedLM", prepared: "PreparedItem", *, level: str, target: str) -> TokenAttribution:
        return grad_x_input(model, prepared, level=level, target=target)

    def extra_results(self, model: "HookedLM", prepared: "PreparedItem", *, target: str) -> list[ActivationAttribution]:
        return [grad_x_activation(model, prepared, self.hooks, target=target)] if self.hooks else []
