"""unpact-mech: does LLM unlearning really erase knowledge?

Load a causal LM once through TransformerLens or nnsight, unlearn a forget set, attribute answers to prompt
tokens / layers / heads / residual components before and after, and try to bring forgotten answers back by
emphasising the prompt's keywords.

>>> from unpact_mech import load_model, load_items, evaluate_items   # doctest: +SKIP
>>> model = load_model("smollm2", backend="transformer_lens")        # doctest: +SKIP
"""

from unpact_mech.data import QAItem, load_items
from unpact_mech.errors import InputError
from unpact_mech.models import HookedLM, Intervention, load_model
from unpact_mech.scoring import evaluate_items, summarize_evaluation

__version__ = "0.1.0"
__all__ = [
    "HookedLM",
    "InputError",
    "Intervention",
    "QAItem",
    "evaluate_items",
    "load_items",
    "load_model",
    "summarize_evaluation",
]
