"""Attribution suite: which prompt tokens, layers, heads and residual components carry the answer?

Per item (a :class:`~unpact_mech.data.record.QAItem` or an encoded item), on either backend, the per-item functions:

* :func:`occlusion` — the paper's unPact score ``C(u) = f(x) - f(x without u)`` (tokens or words; deletion or
  baseline replacement, :data:`OCCLUSION_MODES`; all variants in one batched or packed forward, :data:`BATCHINGS`);
* :func:`grad_x_input`, :func:`grad_x_activation` — gradient x input at the embeddings / at any hook;
* :func:`integrated_gradients` — IG over the question's embeddings (steps batched, completeness delta);
* :func:`attention_paths` — direct contribution per (layer, head, source position);
* :func:`residual_contributions` — direct logit attribution of every residual component + logit lens;
* :func:`keytoken_mask` — the KeyTokens rule (``keytoken_alpha`` / ``keytoken_beta``, defaults
  :data:`DEFAULT_KEYTOKEN_ALPHA` = 0.5, :data:`DEFAULT_KEYTOKEN_BETA` = 3); :func:`keyword_agreement` with
  annotated keywords.

Whole data sets: :func:`attribute_items` runs the method named by an :class:`AttributionConfig` (``method``,
``level``, ``target``, ``keytoken_alpha``, ``keytoken_beta`` and the method's own ``options``) and
:func:`compare_runs` diffs two runs. Methods are objects in a registry (:data:`ATTRIBUTION_METHODS`, one small
file each in :mod:`.methods`): subclass :class:`AttributionMethod` as a dataclass (its fields are its options) and
decorate it with :func:`register_attribution_method` to add one (docs/attribution.md, "Adding an attribution
method"); :func:`get_attribution_method` builds one by name.

Targets (``target=``): ``logprob`` (the paper's LP, default) or ``first_logit`` (:mod:`.targets`). The tensor
formulas are in :mod:`.math`; every result has ``.to_frame()`` (long pandas table).

>>> from unpact_mech import load_model, load_items                       # doctest: +SKIP
>>> from unpact_mech.attribution import occlusion, keytoken_mask         # doctest: +SKIP
>>> model, items = load_model("smollm2"), load_items("builtin:real_facts")  # doctest: +SKIP
>>> res = occlusion(model, items[0], level="word")                       # doctest: +SKIP
>>> [u.text for u, k in zip(res.units, keytoken_mask(res.scores)) if k]  # doctest: +SKIP
"""

from unpact_mech.attribution.attention_paths import attention_paths
from unpact_mech.attribution.compare import compare_heads, compare_layers, compare_units, diff_frames, keytoken_change
from unpact_mech.attribution.gradients import grad_x_activation, grad_x_input
from unpact_mech.attribution.integrated_gradients import integrated_gradients
from unpact_mech.attribution.keytokens import (
    DEFAULT_KEYTOKEN_ALPHA,
    DEFAULT_KEYTOKEN_BETA,
    agreement_summary,
    check_keytoken_rule,
    keytoken_mask,
    keyword_agreement,
)
from unpact_mech.attribution.methods import (
    ATTRIBUTION_METHODS,
    AttributionMethod,
    get_attribution_method,
    register_attribution_method,
)
from unpact_mech.attribution.occlusion import BATCHINGS, occlusion
from unpact_mech.attribution.packing import OCCLUSION_MODES
from unpact_mech.attribution.residual import residual_contributions
from unpact_mech.attribution.results import (
    ActivationAttribution,
    AttentionPaths,
    ResidualContributions,
    TokenAttribution,
)
from unpact_mech.attribution.run import AttributionConfig, AttributionRun, Comparison, attribute_items, compare_runs
from unpact_mech.attribution.targets import TARGETS, Target, get_target
from unpact_mech.attribution.units import PreparedItem, Unit, prepare_item, prompt_units

__all__ = [
    "ATTRIBUTION_METHODS",
    "BATCHINGS",
    "DEFAULT_KEYTOKEN_ALPHA",
    "DEFAULT_KEYTOKEN_BETA",
    "OCCLUSION_MODES",
    "TARGETS",
    "ActivationAttribution",
    "AttentionPaths",
    "AttributionConfig",
    "AttributionMethod",
    "AttributionRun",
    "Comparison",
    "PreparedItem",
    "ResidualContributions",
    "Target",
    "TokenAttribution",
    "Unit",
    "agreement_summary",
    "attention_paths",
    "attribute_items",
    "check_keytoken_rule",
    "compare_heads",
    "compare_layers",
    "compare_runs",
    "compare_units",
    "diff_frames",
    "get_attribution_method",
    "get_target",
    "grad_x_activation",
    "grad_x_input",
    "integrated_gradients",
    "keytoken_change",
    "keytoken_mask",
    "keyword_agreement",
    "occlusion",
    "prepare_item",
    "prompt_units",
    "register_attribution_method",
    "residual_contributions",
]
