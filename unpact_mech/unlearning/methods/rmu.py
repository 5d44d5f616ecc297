"""``rmu`` — representation misdirection for unlearning (WMDP's RMU).

At layer ℓ: ``L = mean_f (1/d)‖h_θ(x_f) − c·u‖² + α·mean_r (1/d)‖h_θ(x_r) − h_ref(x_r)‖²`` over the question and
answer tokens (``blocks.ℓ.hook_resid_post``, read through the same hook names attribution uses), with ``u`` a
random unit vector drawn once from the seed (uniform in [0, 1)^d, normalised, as in the WMDP code) and ``h_ref``
from the frozen reference copy.

Trainable by default, as in the original recipe, only the MLP of layers ℓ−2..ℓ. The WMDP code (``param_ids=[6]``)
trains exactly one matrix per layer — the MLP down-projection (Llama ``mlp.down_proj``, GPT-2 ``mlp.c_proj``) — and
so does this default; pass ``--trainable`` to train more.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.errors import InputError
from unpact_mech.models.hooks import hook_name
from unpact_mech.unlearning import losses
from unpact_mech.unlearning.methods.base import PolicyOutput, Recipe, UnlearningMethod
from unpact_mech.unlearning.methods.registry import register_unlearning_method

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.unlearning.batches import UnlearningSet


def mlp_out_pattern(model: "HookedLM", layers) -> str:
    """Regex over HF parameter names selecting the MLP output projections of ``layers`` (the matrix the original
    recipe trains; the architecture's ``mlp_out_proj``: ``down_proj`` on Llama-style models, ``c_proj`` on GPT-2)."""
    alt = "|".join(str(L) for L in sorted(set(layers)))
    arch = model.arch
    return rf"^{re.escape(arch.layers)}\.({alt})\.{re.escape(arch.mlp)}\.{re.escape(arch.mlp_out_proj)}\.weight$"


def control_vector(d_model: int, c: float, seed: int) -> Tensor:
    """``c·u`` with ``u = r/‖r‖``, ``r ~ U[0, 1)^d`` drawn from ``seed`` alone (the WMDP construction)."""
    r = torch.rand(d_model, generator=torch.Generator().manual_seed(seed))
    return c * r / r.norm()


@register_unlearning_method
class RMU(UnlearningMethod):
    name = "rmu"
    summary = (
        "RMU: steer layer-l resid of forget tokens to c*u, keep retain resid at the reference's; trains MLP l-2..l"
    )
    hyperparameters = {"layer": 7, "c": 100.0, "alpha": 100.0}
    recipe = Recipe(lr=1e-3, steps=6)
    needs_logits = False
    retain_term = "rmu"
    control: Tensor | None = None
    reference: "HookedLM | None" = None

    def check_hyperparameters(self) -> None:
        super().check_hyperparameters()
        layer = self.hp["layer"]
        if float(layer) != int(layer) or layer < 0:
            raise InputError(f"method rmu: layer must be a non-negative integer, got {layer}")
        self.hp["layer"] = int(layer)
        if self.hp["c"] <= 0:
            raise InputError(f"method rmu: c must be > 0, got {self.hp['c']}")

    @property
    def layer(self) -> int:
        return int(self.hp["layer"])

    def check_model(self, model: "HookedLM") -> None:
        if self.layer >= model.shape.n_layers:
            raise InputError(
                f"method rmu: layer {self.layer} out of range (model has layers 0..{model.shape.n_layers - 1})"
            )

    def default_trainable(self, model: "HookedLM") -> str:
        return mlp_out_pattern(model, range(max(0, self.layer - 2), self.layer + 1))

    def cache_hooks(self, model: "HookedLM") -> list[str]:
        return [hook_name(self.layer, "hook_resid_post")]

    def setup(self, model: "HookedLM", data: "UnlearningSet", *, seed: int, batch_size: int = 16) -> None:
        super().setup(model, data, seed=seed, batch_size=batch_size)
        self.control = control_vector(model.shape.d_model, self.hp["c"], seed).to(model.device)
        if self.needs_retain:
            self.reference = model.reference_copy()
            self.reference.hf.to(model.device)

    def teardown(self) -> None:
        self.reference = None
        super().teardown()

    def forget_loss(self, out: PolicyOutput) -> Tensor:
        if self.control is None:
            raise RuntimeError("setup() was not called")
        b = out.batch
        h = out.cache[hook_name(self.layer, "hook_resid_post")]
        return losses.rmu_forget(h[b.forget_rows], b.region[b.forget_rows], self.control)

    def retain_loss(self, out: PolicyOutput) -> Tensor:
        if self.reference is None:
            raise RuntimeError("setup() was not called")
        b, hook = out.batch, hook_name(self.layer, "hook_resid_post")
        with torch.no_grad():
            h_ref = self.reference.forward(b.tf.input_ids[b.retain_rows], cache=[hook], logits_to_keep=1).cache[hook]
        return losses.rmu_retain(out.cache[hook][b.retain_rows], h_ref, b.region[b.retain_rows])
