"""Activation emphasis at the keyword positions: each attack is one tiny edit on the generic edit-at-positions
(:mod:`unpact_mech.attacks.edits`), active during teacher-forced scoring and on every greedy step, on either backend.

==============  =================================================================================  =================
name            edit at layer L (P = emphasised positions, h = residual stream at ``hook``)         exact no-op
==============  =================================================================================  =================
scale           h[P] <- factor * h[P]                                                               factor = 1
patch           h[P] <- h_original[P]  (the original model on the same tokens)                      no layers
steer           h[P] <- h[P] + coefficient * d_L,  d_L = mean over fit items and P of (h_orig - h_unl) coefficient = 0
pasta           A[:, heads, q, k] <- A * (1 if k in P else other_weight) / row sum (PASTA)          other_weight = 1
==============  =================================================================================  =================

Default layers: ``patch`` all layers; ``scale`` and ``steer`` the first half; ``pasta`` the middle third. ``scale``
on a pre-norm model leaves the next layer's input unchanged (the norm divides it out) and instead enlarges the
position's residual relative to what later layers add to it. ``pasta`` scales the attention every query pays to
non-emphasised keys (generated tokens included) and renormalises, following PASTA (Zhang et al. 2023) without its
head-profiling step: heads are chosen by the caller. ``steer`` fits its directions on ``env.fit_ids`` (the forget
items) once per run.
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
    add_per_layer,
    copy_source,
    edit_at_positions,
    key_mask,
    reweight_attention,
    scale_by,
)
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import HookContext, Intervention, hook_name

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
    def is_noop(self) -> bool:
        return False

    def check(self, model: "HookedLM") -> None:
        if self.hook not in RESIDUAL_HOOKS:
            raise InputError(f"intervention {self.name}: hook must be one of {', '.join(RESIDUAL_HOOKS)}")

    def interventions(self, positions: Positions, env: AttackEnv) -> "InterventionFactory":
        if self.is_noop:
            return lambda layout: []
        return edit_at_positions(
            self.hook, self.layers or (), positions, self.edit(env), source=self.source(env), label=self.name
        )


@dataclass(frozen=True)
class Scale(ResidualEdit):
    name: str = "scale"
    description: str = "multiply the residual at the keyword positions"
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
    from unpact_mech.scoring.batching import right_pad_teacher_forced

    names = [hook_name(L, hook) for L in layers]
    sums = {L: torch.zeros(original.shape.d_model) for L in layers}
    count = 0
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
            sums[L] += (a[n] - b[n])[mask].sum(0)
        count += int(mask.sum())
    return {L: s / max(count, 1) for L, s in sums.items()}


@dataclass(frozen=True)
class Steer(ResidualEdit):
    name: str = "steer"
    description: str = "add the mean original-minus-unlearned residual difference at the keyword positions"
    coefficient: float = 1.0

    options: ClassVar[tuple[str, ...]] = ("layers", "hook", "coefficient")

    @property
    def parameters_label(self) -> str:
        return f"c{self.coefficient}"

    @property
    def is_noop(self) -> bool:
        return self.coefficient == 0.0

    def directions(self, env: AttackEnv) -> dict[int, Tensor]:
        """d_L fitted on ``env.fit_ids`` (computed once per run and label)."""
        if env.unlearned is None:
            raise ValueError("steer needs the unlearned model in its environment")

        def fit() -> dict[int, Tensor]:
            prompts = [env.encoded[i].prompt.ids for i in env.fit_ids]
            positions = [env.keywords[i].positions for i in env.fit_ids]
            return steering_directions(
                env.original, env.unlearned, prompts, positions, self.layers or (), self.hook, env.batch_size
            )

        return env.cached(("steer_directions", self.label), fit)

    def edit(self, env: AttackEnv) -> Edit:
        return add_per_layer(self.directions(env), self.coefficient)


@dataclass(frozen=True)
class Pasta(ActivationAttack):
    name: str = "pasta"
    description: str = "down-weight attention to non-keyword keys and renormalise (PASTA)"
    other_weight: float = 0.1
    heads: tuple[int, ...] | None = None

    options: ClassVar[tuple[str, ...]] = ("layers", "other_weight", "heads")

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

    def interventions(self, positions: Positions, env: AttackEnv) -> "InterventionFactory":
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
