"""``integrated_gradients`` — IG over the question's embeddings
(:func:`~unpact_mech.attribution.integrated_gradients.integrated_gradients`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from unpact_mech.attribution.integrated_gradients import DEFAULT_STEPS, check_ig_options, integrated_gradients
from unpact_mech.attribution.methods.base import AttributionMethod
from unpact_mech.attribution.methods.registry import register_attribution_method
from unpact_mech.attribution.occlusion import resolve_baseline_token
from unpact_mech.attribution.results import TokenAttribution

if TYPE_CHECKING:
    from unpact_mech.attribution.units import PreparedItem
    from unpact_mech.models.hooked import HookedLM


@register_attribution_method
@dataclass
class IntegratedGradients(AttributionMethod):
    """``steps`` quadrature nodes; ``positions``: interpolate the ``question`` tokens or every ``prompt`` token but
    the first; ``baseline_token``: the baseline embedding's token (id or one-token text; None = zeros)."""

    name = "integrated_gradients"
    description = "IG over the question's embeddings (first token fixed), completeness per item"
    steps: int = DEFAULT_STEPS
    positions: str = "question"
    baseline_token: int | str | None = None

    def validate(self) -> None:
        check_ig_options(self.steps, self.positions)

    def validate_for(self, model: "HookedLM") -> None:
        if self.baseline_token is not None:
            resolve_baseline_token(model, self.baseline_token)

    def attribute(self, model: "HookedLM", prepared: "PreparedItem", *, level: str, target: str) -> TokenAttribution:
        baseline = "zero" if self.baseline_token is None else self.baseline_token
        return integrated_gradients(
            model, prepared, level=level, steps=self.steps, positions=self.positions, baseline=baseline, target=target
        )

    def summarize(self, results: Sequence[TokenAttribution], *, target: str) -> dict[str, Any]:
        """``steps`` and the mean / max over items of
        ``completeness_rel = |sum_p IG_p - (f(x) - f(b))| / |f(x) - f(b)|``."""
        if not results:
            return {}
        rel = torch.tensor([r.details["completeness_rel"] for r in results])
        return {
            "steps": self.steps,
            "completeness_rel_mean": float(rel.mean()),
            "completeness_rel_max": float(rel.max()),
        }
