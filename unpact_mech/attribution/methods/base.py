"""The attribution-method interface: one object per method, holding its own options; the runner does the rest.

A method is a dataclass subclass of :class:`AttributionMethod`, registered by name
(:func:`~unpact_mech.attribution.methods.registry.register_attribution_method`). It declares

* :attr:`name`, :attr:`description` and its options as dataclass fields with defaults (``AttributionConfig.options``
  sets them by name);
* :meth:`validate` (model-independent checks, before anything is loaded) and :meth:`validate_for` (checks that need
  the model: hook names, layer range, baseline token), both raising :class:`~unpact_mech.errors.InputError` with a
  one-line message;
* :meth:`attribute`: one prepared item -> the method's result object (it has ``.to_frame()`` and ``target_value``);
  :meth:`attribute_many` (what the runner calls, a chunk of items at a time) loops over it unless the method shares
  work across items;
* how a result joins a run (:func:`~unpact_mech.attribution.run.attribute_items`): :meth:`token_view` (its
  per-unit :class:`TokenAttribution`, which gets KeyTokens, keyword agreement and the token heatmap; None when it
  has none), :meth:`frames` (its long rows), :meth:`extra_results` (further per-item analyses, e.g. gradient x
  activation) and :meth:`summarize` (its own summary entries);
* :attr:`head_view` / :attr:`layer_view`: its frames have per-(layer, head) ``attention_path`` rows / per-(layer,
  component) ``direct_logit`` and logit-lens rows, which :func:`~unpact_mech.attribution.run.compare_runs` diffs and
  the outputs plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from numbers import Integral
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from torch import Tensor

from unpact_mech.attribution.results import TokenAttribution
from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.attribution.units import PreparedItem
    from unpact_mech.models.hooked import HookedLM


@dataclass
class AttributionMethod:
    """Base class: subclasses are dataclasses whose fields are the method's options, and override :meth:`attribute`."""

    name: ClassVar[str]
    description: ClassVar[str]
    head_view: ClassVar[bool] = False
    layer_view: ClassVar[bool] = False

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """``option -> default`` in declaration order."""
        return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cls)}

    def options(self) -> dict[str, Any]:
        """``option -> value`` of this object."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validate(self) -> None:
        """Model-independent checks of the options (raise :class:`InputError`). Default: none."""

    def validate_for(self, model: "HookedLM") -> None:
        """Checks that need the model (raise :class:`InputError`). Default: none."""

    def attribute(self, model: "HookedLM", prepared: "PreparedItem", *, level: str, target: str) -> Any:
        """The method's result for one item: ``level`` is ``token`` or ``word``, ``target`` a target name."""
        raise NotImplementedError

    def attribute_many(
        self, model: "HookedLM", prepared: Sequence["PreparedItem"], *, level: str, target: str
    ) -> list[Any]:
        """:meth:`attribute` of every item, in order. Override to share work across items (occlusion packs many
        items into one forward); the results must equal the item-by-item ones."""
        return [self.attribute(model, p, level=level, target=target) for p in prepared]

    def token_view(self, result: Any, prepared: "PreparedItem", *, level: str) -> TokenAttribution | None:
        """The result's scores per question unit (the result itself when it is a :class:`TokenAttribution`)."""
        return result if isinstance(result, TokenAttribution) else None

    def frames(self, result: Any, view: TokenAttribution | None, keytokens: Tensor | None) -> list[pd.DataFrame]:
        """The item's long frames, ``keytokens`` (U,) bool marking the view's KeyTokens: the result's rows with
        ``is_keytoken`` when it is its own token view; else its rows, then the view's unit rows (without per-item
        rows, which would repeat the result's)."""
        if view is None:
            return [result.to_frame()]
        if view is result:
            return [result.to_frame(keytokens=keytokens)]
        return [result.to_frame(), view.to_frame(item_rows=False, keytokens=keytokens)]

    def extra_results(self, model: "HookedLM", prepared: "PreparedItem", *, target: str) -> list[Any]:
        """Further results for the item (each adds its ``.to_frame()`` rows; kept in ``AttributionRun.extras``)."""
        return []

    def summarize(self, results: Sequence[Any], *, target: str) -> dict[str, Any]:
        """The method's own summary entries over the run's results (added after the common ones). Default: none."""
        return {}


def check_positive_int(method: str, option: str, value: Any) -> None:
    """Raise :class:`InputError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InputError(f"attribution method {method}: {option} must be an integer >= 1, got {value!r}")
