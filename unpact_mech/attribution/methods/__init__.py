"""The attribution methods, one short file each, in a registry (each wraps its per-item function)."""

from unpact_mech.attribution.methods.base import AttributionMethod
from unpact_mech.attribution.methods.registry import (
    ATTRIBUTION_METHODS,
    get_attribution_method,
    register_attribution_method,
)

__all__ = ["ATTRIBUTION_METHODS", "AttributionMethod", "get_attribution_method", "register_attribution_method"]

# Import order = registry order = the order shown by `unpact attribute --help` (kept by hand, not sorted).
# isort: off
from unpact_mech.attribution.methods import occlusion, grad_x_input, integrated_gradients  # noqa: F401
from unpact_mech.attribution.methods import attention, residual  # noqa: F401
# isort: on
