"""The unlearning methods, one short file each, in a registry (each method overrides only its loss)."""

from unpact_mech.unlearning.methods.base import HYPERPARAMETERS, LossTerms, PolicyOutput, Recipe, UnlearningMethod
from unpact_mech.unlearning.methods.registry import UNLEARNING_METHODS, get_unlearning_method, register_unlearning_method

# Import order = registry order = the order shown by `unpact unlearn --help`.
from unpact_mech.unlearning.methods import ga, ga_gdr, ga_klr, npo, npo_gdr, npo_klr, simnpo, rmu, task_vector, keyguard  # noqa: E402,F401,I001

__all__ = ["HYPERPARAMETERS", "UNLEARNING_METHODS", "LossTerms", "PolicyOutput", "Recipe", "UnlearningMethod", "get_unlearning_method", "register_unlearning_method"]
