"""Activation emphasis at the keyword positions: each attack is one tiny edit on the generic edit-at-positions
(:mod:`unpact_mech.attacks.edits`), active during teacher-forced scoring and on every greedy step, on either backend.

==============  =================================================================================  =================
name            edit at layer L (P = emphasised positions, h = residual stream at ``hook``)         exact no-op
==============  =================================================================================  =================
scale           h[P] <- factor * h[P]                                                               factor = 1
patch           h[P] <- h_original[P]  (the original model on the same tokens)                      no layers
steer           h[P] <- h[P] + c * d_L, d_L = mean over OTHER-fold fit items and P of (h_orig - h_unl)  c = 0
pasta           A[:, heads, q, k] <- A * (1 if k in P else other_weight) / row sum (PASTA)          other_weight = 1
==============  =================================================================================  =================

Default layers: ``patch`` all layers; ``scale`` and ``steer`` the first half; ``pasta`` the middle third. ``scale``
on a pre-norm model leaves the next layer's input unchanged (the norm divides it out) and instead enlarges the
position's residual relative to what later layers add to it. ``pasta`` scales the attention every query pays to
non-emphasised keys (generated tokens included) and renormalises, following PASTA (Zhang et al. 2023) without its
head-profiling step: heads are chosen by the caller. ``steer`` fits its directions on ``env.fit_ids`` (the forget
items) once per run, cross-fitted over ``folds`` (an item is never steered with a direction fitted on itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from unpact_mech.attacks.base import ActivationAttack, AttackEnv, Positions
from unpact_mech.attacks.edits import (
    Edit,
    add_per_item,
    copy_source,
    edit_at_positions,
    key_mask,
    reweight_attention,
    scale_by,
)
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import HookContext, Intervention, hook_name
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.batching import BatchLayout, InterventionFactory

RESIDUAL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


@dataclass(frozen=True)
class ResidualEdit(ActivationAttack):
    """An activation attack that is one :data:`~unpact_mech.attacks.edits.Edit` of the residual stream at ``hook``
    (subclasses define :meth:`edit`, and :meth:`source` when the edit reads another model)."""

    hook: str = "hook_resid_post"

    options: ClassVar[tuple[str, ...]] = ("layers", "hook")

    def edit(self, env: AttackEnv) -> Edit:
        raise NotImplementedError

    def source(self, env: AttackEnv) -> "HookedLM | None":
        """The model whose activations the edit reads (None: none)."""
        return None

    @property
    def cost(self) -> float:  # type: ignore[override]
        """2 when the edit reads another model (:meth:`source` overridden: that model runs on every forward too)."""
        return 1.0 if type(self).source is ResidualEdit.source else 2.0

    @property
    def is_noop(self) -> bool:
        return False

    def check(self, model: "HookedLM") -> None:
        if self.hook not in RESIDUAL_HOOKS:
            raise InputError(f"intervention {self.name}: hook must be one of {', '.join(RESIDUAL_HOOKS)}")

    def interventions(
        self, positions: Positions, env: AttackEnv, item_ids: Sequence[str] | None = None
    ) -> "InterventionFactory":
        if self.is_noop:
            return lambda layout: []
        return edit_at_positions(
            self.hook, self.layers or (), positions, self.edit(env), source=self.source(env), label=self.name
        )


@dataclass(frozen=True)
class Scale(ResidualEdit):
    name: str = "scale"
    description: str = "multiply the residual at the keyword positions"
    family: str = "residual_scaling"
    factor: float = 2.0

    options: ClassVar[tuple[str, ...]] = ("layers", "hook", "factor")

    @property
    def parameters_label(self) -> str:
        return f"x{self.factor}"

    @property
    def is_noop(self) -> bool:
        return self.factor == 1.0

    def check(self, model: "HookedLM") -> None:
        super().check(model)
        if not self.factor > 0:
            raise InputError(f"intervention scale: factor must be > 0, got {self.factor}")

    def edit(self, env: AttackEnv) -> Edit:
        return scale_by(self.factor)


@dataclass(frozen=True)
class Patch(ResidualEdit):
    name: str = "patch"
    description: str = "copy the original model's residual at the keyword positions"
    family: str = "activation_patching"
    runs_on_original: bool = False  # the original patched from itself is the original

    def default_layers(self, n_layers: int) -> tuple[int, ...]:
        return tuple(range(n_layers))

    @property
    def is_noop(self) -> bool:
        return not self.layers

    def source(self, env: AttackEnv) -> "HookedLM":
        return env.original

    def edit(self, env: AttackEnv) -> Edit:
        return copy_source


def residual_differences(
    original: "HookedLM",
    unlearned: "HookedLM",
    prompts: Sequence[Sequence[int]],
    positions: Positions,
    layers: Sequence[int],
    hook: str = "hook_resid_post",
    batch_size: int = 16,
) -> tuple[dict[int, Tensor], Tensor]:
    """Per item i: ``S_L[i] = sum_{p in P_i} (h_orig_L[i, p] - h_unl_L[i, p])`` -> ({L: (n_items, d_model)}, the
    position counts |P_i| (n_items,))."""
    from unpact_mech.scoring.batching import right_pad_teacher_forced

    names = [hook_name(L, hook) for L in layers]
    sums = {L: torch.zeros(len(prompts), original.shape.d_model) for L in layers}
    counts = torch.zeros(len(prompts))
    for start in range(0, len(prompts), batch_size):
        idx = list(range(start, min(start + batch_size, len(prompts))))
        batch = right_pad_teacher_forced([prompts[i] for i in idx], [[]] * len(idx), original.pad_token_id, idx)
        mask = batch.layout.mask([positions[i] for i in idx])
        if not mask.any():
            continue
        with torch.no_grad():
            a = original.forward(batch.input_ids, cache=names).cache
            b = unlearned.forward(batch.input_ids, cache=names).cache
        for L, n in zip(layers, names):
            sums[L][idx] = ((a[n] - b[n]).float() * mask[..., None]).sum(1).cpu()
        counts[idx] = mask.sum(1).float()
    return sums, counts


def steering_directions(
    original: "HookedLM",
    unlearned: "HookedLM",
    prompts: Sequence[Sequence[int]],
    positions: Positions,
    layers: Sequence[int],
    hook: str = "hook_resid_post",
    batch_size: int = 16,
) -> dict[int, Tensor]:
    """d_L = mean over items i and positions p in P_i of (h_orig_L[i, p] - h_unl_L[i, p]) -> {L: (d_model,)}."""
    sums, counts = residual_differences(original, unlearned, prompts, positions, layers, hook, batch_size)
    return {L: s.sum(0) / max(float(counts.sum()), 1.0) for L, s in sums.items()}


def fold_of(item_ids: Sequence[str], folds: int) -> dict[str, int]:
    """A fixed fold per id: the position in sorted order modulo ``folds`` (balanced, independent of input order)."""
    return {item_id: n % folds for n, item_id in enumerate(sorted(item_ids))}


def fit_folds(fit_ids: Sequence[str], folds: int) -> tuple[list[str], int, dict[str, int]]:
    """The fit ids, the number of folds actually used (``folds``, at most one per item, at least 2) and each id's
    fold (:func:`fold_of`) — the split every cross-fitted attack (``steer``, ``ablate_direction``) estimates on."""
    ids = list(fit_ids)
    n_folds = int(min(folds, max(len(ids), 2)))
    return ids, n_folds, fold_of(ids, n_folds)


def cross_fitted(sums: dict[int, Tensor], counts: Tensor, folds: Sequence[int], n_folds: int) -> dict[int, Tensor]:
    """Direction per fold, fitted on the OTHER folds: ``d_L^(f) = sum_{i: fold_i != f} S_L[i] / sum_{i: fold_i != f}
    |P_i|`` -> {L: (n_folds + 1, d_model)}; the last row uses every item (for items outside the fit set). A fold
    whose complement has no position gets a zero direction."""
    fold = torch.as_tensor(list(folds), dtype=torch.long)
    out = {}
    for L, s in sums.items():
        rows = []
        for f in range(n_folds):
            keep = fold != f
            rows.append(
                s[keep].sum(0) / float(counts[keep].sum()) if counts[keep].sum() > 0 else torch.zeros_like(s[0])
            )
        rows.append(s.sum(0) / max(float(counts.sum()), 1.0))
        out[L] = torch.stack(rows)
    return out


@dataclass(frozen=True)
class Steer(ResidualEdit):
    """Steering toward the original: ``h[P] <- h[P] + coefficient * d_L``, with ``d_L`` the mean residual difference
    (original - unlearned) at the keyword positions of the fit items (``env.fit_ids``, the forget items),
    CROSS-FITTED: the fit items are split into ``folds`` fixed folds and an item of fold f is steered with the
    direction estimated on the other folds only — no item is scored with a direction fitted on itself. Items
    outside the fit set (e.g. retain controls) use the direction of all fit items."""

    name: str = "steer"
    description: str = "add the mean original-minus-unlearned residual difference (cross-fitted) at the keywords"
    family: str = "residual_steering"
    coefficient: float = 1.0
    folds: int = 5

    options: ClassVar[tuple[str, ...]] = ("layers", "hook", "coefficient", "folds")

    @property
    def parameters_label(self) -> str:
        return f"c{self.coefficient}"

    @property
    def is_noop(self) -> bool:
        return self.coefficient == 0.0

    def check(self, model: "HookedLM") -> None:
        super().check(model)
        if self.folds < 2 or self.folds != int(self.folds):
            raise InputError(f"intervention steer: folds must be an integer >= 2, got {self.folds}")

    def fold_directions(self, env: AttackEnv) -> tuple[dict[str, int], dict[int, Tensor]]:
        """(fold of each fit id, {L: (folds + 1, d_model)} cross-fitted directions), computed once per run."""
        if env.unlearned is None:
            raise ValueError("steer needs the unlearned model in its environment")

        def fit() -> tuple[dict[str, int], dict[int, Tensor]]:
            ids, n_folds, folds = fit_folds(env.fit_ids, self.folds)
            prompts = [env.encoded[i].prompt.ids for i in ids]
            positions = [env.keywords[i].positions for i in ids]
            sums, counts = residual_differences(
                env.original, env.unlearned, prompts, positions, self.layers or (), self.hook, env.batch_size
            )
            return folds, cross_fitted(sums, counts, [folds[i] for i in ids], n_folds)

        return env.cached(("steer_directions", self.label, self.folds), fit)

    def interventions(
        self, positions: Positions, env: AttackEnv, item_ids: Sequence[str] | None = None
    ) -> "InterventionFactory":
        if self.is_noop:
            return lambda layout: []
        folds, directions = self.fold_directions(env)
        everyone = next(iter(directions.values())).shape[0] - 1 if directions else 0
        ids = list(item_ids) if item_ids is not None else [None] * len(positions)
        row = torch.as_tensor([folds.get(i, everyone) if i is not None else everyone for i in ids], dtype=torch.long)
        per_item = {L: d[row] for L, d in directions.items()}  # (n_evaluated, d_model)
        return edit_at_positions(
            self.hook, self.layers or (), positions, add_per_item(per_item, self.coefficient), label=self.name
        )


@dataclass(frozen=True)
class Pasta(ActivationAttack):
    name: str = "pasta"
    description: str = "down-weight attention to non-keyword keys and renormalise (PASTA)"
    family: str = "attention_reweighting"
    other_weight: float = 0.1
    heads: tuple[int, ...] | None = None

    options: ClassVar[tuple[str, ...]] = ("layers", "other_weight", "heads")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "heads", one_or_many(self.heads))

    @property
    def parameters_label(self) -> str:
        return f"x{self.other_weight}"

    def default_layers(self, n_layers: int) -> tuple[int, ...]:
        return tuple(range(n_layers // 3, max(n_layers // 3 + 1, 2 * n_layers // 3)))

    def check(self, model: "HookedLM") -> None:
        if not self.other_weight > 0:
            raise InputError(f"intervention pasta: other_weight must be > 0, got {self.other_weight}")
        n_heads = model.shape.n_heads
        if self.heads is not None and any(not 0 <= h < n_heads for h in self.heads):
            raise InputError(f"intervention pasta: heads must be in 0..{n_heads - 1}, got {list(self.heads)}")

    def interventions(
        self, positions: Positions, env: AttackEnv, item_ids: Sequence[str] | None = None
    ) -> "InterventionFactory":
        def build(layout: "BatchLayout") -> list[Intervention]:
            if self.other_weight == 1.0:
                return []
            mask = layout.mask([positions[i] for i in layout.items])
            keep = mask.any(-1)  # rows with nothing to emphasise stay untouched

            def fn(act: Tensor, ctx: HookContext) -> Tensor:
                out = reweight_attention(act, key_mask(mask, act.shape[-1]), self.other_weight, self.heads)
                return torch.where(keep[:, None, None, None], out, act)

            return [Intervention(hook_name(L, "attn.hook_pattern"), fn, f"pasta@{L}") for L in self.layers or ()]

        return build


ACTIVATION_ATTACKS: tuple[ActivationAttack, ...] = (Scale(), Patch(), Steer(), Pasta())
