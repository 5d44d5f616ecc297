"""``ablate_direction``: project one residual direction per layer out of the unlearned model, everywhere — an
intervention that uses no keywords.

Removing a single residual direction brings back much of what an RMU model forgot (Łucki et al. arXiv 2409.18025;
directional ablation as in Arditi et al. 2024). Per layer L of ``layers`` (default: the first half — RMU writes its
perturbation at an early-middle layer, layer 7 of SmolLM2's 30 in this toolkit's ``rmu``, and later layers carry it),
with h the residual at ``hook`` (default ``hook_resid_post``)::

    u_L = mean over fit items i and prompt positions p of (h_unlearned_L[i, p] - h_original_L[i, p])
    û_L = u_L / ||u_L||        (0 when u_L = 0, e.g. original == unlearned)
    h  <-  h - scale * (h · û_L) û_L          at EVERY position: prompt, answer and generated tokens

CROSS-FITTED as ``steer`` is (:func:`~unpact_mech.attacks.activation.fit_folds`,
:func:`~unpact_mech.attacks.activation.residual_differences`, :func:`~unpact_mech.attacks.activation.cross_fitted`):
the fit items (``env.fit_ids``, the forget items) fall into ``folds`` fixed folds and an item of fold f is ablated
with the direction fitted on the other folds; items outside the fit set use the direction of every fit item. The
directions are fitted once per run (``env.memo``) and shared with the matched control.

Matched control (:meth:`AblateDirection.control`, run in the recovery runner's ``random_control`` arm):
``random=true`` — the same layers, hook, scale and folds, but each layer's direction a random unit vector (drawn from
``numpy.random.default_rng([seed, L])`` with the run's seed), of the same norm as the fitted one it replaces (1, or 0
where the fitted direction is 0). ``scale=0`` (or a zero direction) is an exact no-op.

:func:`~unpact_mech.attacks.edits.edit_at_positions` edits prompt positions only (generated tokens lie beyond its
prompt mask), so the ablation has its own factory, :func:`project_out_everywhere`, whose interventions edit every
position of every forward: the prompt forward and each KV-cached decoding step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor

from unpact_mech.attacks.activation import RESIDUAL_HOOKS, cross_fitted, fit_folds, residual_differences
from unpact_mech.attacks.base import ActivationAttack, AttackEnv, Positions
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import HookContext, Intervention, hook_name
from unpact_mech.scoring.tokens import encode_item

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.batching import BatchLayout, InterventionFactory


def unit_rows(x: Tensor) -> Tensor:
    """Each row of ``x`` (..., d) divided by its norm; a zero row stays zero (exactly)."""
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def project_out(h: Tensor, u: Tensor, scale: float = 1.0) -> Tensor:
    """``h - scale * (h · u) u`` along the last axis: ``h`` (..., d), ``u`` broadcastable to it (a unit vector
    removes h's component along u for ``scale`` = 1; u = 0 or scale = 0 returns h's values exactly)."""
    return h - scale * (h * u).sum(-1, keepdim=True) * u


def random_directions(like: Mapping[int, Tensor], seed: int) -> dict[int, Tensor]:
    """The matched random control of ``like`` ({L: (R, d)} directions): per layer one random unit vector drawn from
    ``numpy.random.default_rng([seed, L])``, in every row scaled to that row's norm in ``like``."""
    out = {}
    for L, rows in like.items():
        v = torch.from_numpy(np.random.default_rng([int(seed), int(L)]).standard_normal(rows.shape[-1]))
        v = unit_rows(v.to(rows.dtype))
        out[L] = rows.norm(dim=-1, keepdim=True) * v
    return out


def fitted_directions(
    original: "HookedLM",
    unlearned: "HookedLM",
    prompts: Sequence[Sequence[int]],
    folds: Sequence[int],
    n_folds: int,
    layers: Sequence[int],
    hook: str = "hook_resid_post",
    batch_size: int = 16,
) -> dict[int, Tensor]:
    """Cross-fitted unit directions ``û_L^(f)`` -> {L: (n_folds + 1, d_model)}: row f from the items of the OTHER
    folds, the last row from every item; each the normalised mean over those items' prompt positions of
    ``h_unlearned - h_original`` at ``blocks.L.<hook>`` (``folds[i]`` is item i's fold)."""
    everywhere = [range(len(p)) for p in prompts]
    sums, counts = residual_differences(original, unlearned, prompts, everywhere, layers, hook, batch_size)
    means = cross_fitted(sums, counts, folds, n_folds)  # original - unlearned
    return {L: unit_rows(-m) for L, m in means.items()}


def project_out_everywhere(
    hook: str, directions: Mapping[int, Tensor], scale: float = 1.0, *, label: str = ""
) -> "InterventionFactory":
    """Factory projecting ``directions[L][i]`` (one row per evaluated item i; (n_items, d_model)) out of
    ``blocks.L.<hook>`` at EVERY position of every forward — prompt, teacher-forced answer and each generated
    token — of the batch row holding item i: ``h <- h - scale * (h · u_i) u_i`` (:func:`project_out`)."""

    def build(layout: "BatchLayout") -> list[Intervention]:
        rows = torch.as_tensor(list(layout.items), dtype=torch.long)
        return [
            Intervention(hook_name(int(L), hook), _projector(d[rows], scale), f"{label}@{L}")
            for L, d in directions.items()
        ]

    return build


def _projector(u: Tensor, scale: float):
    def fn(act: Tensor, ctx: HookContext) -> Tensor:
        return project_out(act, u[:, None, :].to(act), scale)  # act (B, T, d); u (B, d), one row per batch row

    return fn


@dataclass(frozen=True)
class AblateDirection(ActivationAttack):
    """``ablate_direction`` (module docstring): options ``layers``, ``hook``, ``folds`` (>= 2), ``scale`` (the
    multiple of the projection removed; 0 = no-op) and ``random`` (the matched random-direction control)."""

    name: str = "ablate_direction"
    description: str = "project the cross-fitted mean unlearned-minus-original residual direction out everywhere"
    family: str = "direction_ablation"
    uses_keywords: bool = False
    hook: str = "hook_resid_post"
    folds: int = 5
    scale: float = 1.0
    random: bool = False

    options: ClassVar[tuple[str, ...]] = ("layers", "hook", "folds", "scale", "random")

    @property
    def parameters_label(self) -> str:
        return ("" if self.scale == 1.0 else f"x{self.scale}") + ("random" if self.random else "")

    @property
    def is_noop(self) -> bool:
        return self.scale == 0.0 or not self.layers

    def check(self, model: "HookedLM") -> None:
        if self.hook not in RESIDUAL_HOOKS:
            raise InputError(f"intervention {self.name}: hook must be one of {', '.join(RESIDUAL_HOOKS)}")
        if self.folds < 2 or self.folds != int(self.folds):
            raise InputError(f"intervention {self.name}: folds must be an integer >= 2, got {self.folds}")
        if not math.isfinite(self.scale):
            raise InputError(f"intervention {self.name}: scale must be a finite number, got {self.scale}")

    def control(self) -> "AblateDirection | None":
        """The same ablation with random unit directions of the same norm (none for the random variant itself)."""
        return None if self.random else dataclasses.replace(self, random=True)

    def fold_directions(self, env: AttackEnv) -> tuple[dict[str, int], dict[int, Tensor]]:
        """(fold of each fit id, {L: (folds + 1, d_model)} cross-fitted unit directions), fitted once per run and
        shared by the condition and its random control."""
        if env.unlearned is None:
            raise ValueError("ablate_direction needs the unlearned model in its environment")

        def fit() -> tuple[dict[str, int], dict[int, Tensor]]:
            ids, n_folds, folds = fit_folds(env.fit_ids, self.folds)
            prompts = [(env.encoded.get(i) or encode_item(env.original, env.items[i])).prompt.ids for i in ids]
            directions = fitted_directions(
                env.original, env.unlearned, prompts, [folds[i] for i in ids], n_folds, self.layers or (), self.hook,
                env.batch_size,
            )  # fmt: skip
            return folds, directions

        return env.cached(("ablate_direction", tuple(self.layers or ()), self.hook, int(self.folds)), fit)

    def item_directions(self, env: AttackEnv, item_ids: Sequence[str]) -> dict[int, Tensor]:
        """{L: (n_items, d_model)}: each item's direction (its fold's, or every fit item's outside the fit set;
        random ones for the control)."""
        folds, directions = self.fold_directions(env)
        if self.random:
            directions = random_directions(directions, env.seed)
        everyone = next(iter(directions.values())).shape[0] - 1 if directions else 0
        row = torch.as_tensor([folds.get(i, everyone) for i in item_ids], dtype=torch.long)
        return {L: d[row] for L, d in directions.items()}

    def interventions(
        self, positions: Positions, env: AttackEnv, item_ids: Sequence[str] | None = None
    ) -> "InterventionFactory":
        """The ablation of every evaluated item (``positions`` are ignored: it acts everywhere; without ``item_ids``
        every item gets the direction of all fit items, as in ``steer``)."""
        if self.is_noop:
            return lambda layout: []
        ids = list(item_ids) if item_ids is not None else [""] * len(positions)  # unnamed items: all fit items
        return project_out_everywhere(self.hook, self.item_directions(env, ids), self.scale, label=self.label)


DIRECTION_ATTACKS: tuple[ActivationAttack, ...] = (AblateDirection(),)
