"""The unlearning methods, one short file each, in a registry (each method overrides only its loss)."""

from unpact_mech.unlearning.methods.base import (
    HYPERPARAMETERS,
    LossTerms,
    PolicyOutput,
    Recipe,
    UnlearningMethod,
    WeightPass,
)
from unpact_mech.unlearning.methods.registry import (
    UNLEARNING_METHODS,
    get_unlearning_method,
    register_unlearning_method,
)

__all__ = [
    "HYPERPARAMETERS",
    "UNLEARNING_METHODS",
    "LossTerms",
    "PolicyOutput",
    "Recipe",
    "UnlearningMethod",
    "WeightPass",
    "get_unlearning_method",
    "register_unlearning_method",
]

# Import order = registry order = the order shown by `unpact unlearn --help` (kept by hand, not sorted).
# isort: off
from unpact_mech.unlearning.methods import ga, ga_gdr, ga_klr, npo, npo_gdr, npo_klr  # noqa: F401
from unpact_mech.unlearning.methods import simnpo, rmu, task_vector, keyguard, keyguard_variants  # noqa: F401
# isort: on
