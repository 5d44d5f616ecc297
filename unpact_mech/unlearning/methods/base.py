"""The method interface: a method is its loss (open-unlearning style); the loop does everything else.

A method declares

* its hyperparameters with defaults (``hyperparameters``) and a default :class:`Recipe` (lr, steps, batch size —
  measured on SmolLM2-135M with ``builtin:real_facts``, see docs/unlearning.md);
* what the ONE policy forward of a micro-step must produce (:meth:`cache_hooks`, :attr:`needs_logits`);
* :meth:`forget_loss` and, through a retain mixin, :meth:`retain_loss`; the total is
  ``L = L_forget + α·L_retain``;
* optionally :meth:`setup` (reference quantities from the frozen base model), :meth:`default_trainable` (a
  parameter regex) and :meth:`unlearned_weights` (weight arithmetic after training, for task vectors);
* optionally :meth:`extra_passes`: more forward + backward passes of a micro-batch with trained weights temporarily
  replaced (:class:`WeightPass`; ``keyguard``'s noise and quantization terms), inside the same optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from unpact_mech.errors import InputError
from unpact_mech.scoring.logprob import token_logprobs
from unpact_mech.unlearning import losses

if TYPE_CHECKING:
    from collections.abc import Sequence

    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.models.hooks import Intervention
    from unpact_mech.unlearning.batches import StepBatch, UnlearningSet
    from unpact_mech.unlearning.targets import TrainTarget

#: Hyperparameter names, their symbols and meaning (shared by all methods, the CLI and the docs).
HYPERPARAMETERS: dict[str, str] = {
    "alpha": "α: weight of the retain term (L = L_forget + α·L_retain)",
    "beta": "β: inverse temperature of NPO/SimNPO",
    "gamma": "γ: SimNPO margin",
    "c": "c: RMU steering coefficient (norm of the control vector c·u)",
    "layer": "ℓ: RMU layer (its resid_post is steered; MLPs of ℓ-2..ℓ are trained)",
    "scale": "s: task-vector scale (θ − s·(θ_ft − θ))",
    "prompt_attacks": "w_p: keyguard weight of the misdirection on forget prompts rewritten by keyword emphasis",
    "activation_attacks": "w_a: keyguard weight of the misdirection with the original's activations patched in at "
    "KeyTokens",
    "keyword_weight": "w_k: keyguard extra weight of the forget term at the original's KeyToken positions",
    "retain_attacks": "w_r: keyguard weight of the retain term on retain prompts rewritten the same way",
    "late_weight": "w_l: keyguard weight of the misdirection (and retain anchor) at the late layer ℓ'",
    "late_layer": "ℓ': keyguard late layer (negative = from the end; -3 = n_layers − 3)",
    "late_answer_weight": "w_la: keyguard weight of the misdirection at ℓ' on the ANSWER positions only (and of "
    "the retain anchor at ℓ')",
    "steer_attacks": "w_s: keyguard weight of the misdirection with the policy steered toward the original at the "
    "KeyTokens (the steer attack, directions re-fitted every step)",
    "steer_attack_coef": "c_s: keyguard coefficient of the training steer attack (h[P] += c_s·d_L; 1 = the "
    "attack's own)",
    "noise_weight": "w_n: keyguard weight of the forget term at randomly perturbed weights (relearning smoothing)",
    "noise_scale": "σ: keyguard noise of the perturbed weights, relative to each matrix's rms (W + σ·rms(W)·ε)",
    "quant_weight": "w_q: keyguard weight of the forget term at the re-quantized weights (straight-through)",
}


@dataclass(frozen=True)
class Recipe:
    """A method's default training recipe (used for every value the caller leaves unset)."""

    lr: float
    steps: int
    batch_size: int = 4


@dataclass(frozen=True)
class LossTerms:
    """``total = forget + α·retain`` (``retain`` None when the method has no retain term)."""

    total: Tensor
    forget: Tensor
    retain: Tensor | None = None


@dataclass(frozen=True)
class WeightPass:
    """One extra forward + backward of a micro-batch with trained weights temporarily replaced
    (:meth:`UnlearningMethod.extra_passes`).

    The loop runs it after the micro-batch's main backward, on the same batch (same rows, same interventions):
    every trained parameter ``p`` named ``name`` for which ``weight(name, p)`` returns a tensor (same shape; called
    without grad on the current value) holds that value during the pass's forward and backward, and is restored
    bit-exactly afterwards; ``loss(out)`` — already weighted — is back-propagated (``/ grad_accum``), so its gradient
    AT THE TEMPORARY WEIGHTS is added to the clean weights' gradient before the optimizer step (a straight-through
    gradient for a quantized value, a randomly smoothed one for a perturbed value). ``label`` names its column in the
    training log (``<label>_loss``).
    """

    label: str
    weight: "Callable[[str, Tensor], Tensor | None]"
    loss: "Callable[[PolicyOutput], Tensor]"


@dataclass
class PolicyOutput:
    """What the micro-step's single policy forward produced, with row views for forget/retain.

    ``logits`` (B, K, V) over the batch's kept positions (None when the method needs none); ``cache`` hook -> (B, T, …).
    """

    batch: "StepBatch"
    logits: Tensor | None
    cache: dict[str, Tensor]

    @cached_property
    def token_logprobs(self) -> Tensor:
        """(B, K) log-probs of the targets (computed once, shared by the forget and retain terms)."""
        if self.logits is None:
            raise RuntimeError("this method's forward keeps no logits")
        return token_logprobs(self.logits, self.batch.tf.targets)

    def logprobs(self, rows: slice) -> tuple[Tensor, Tensor]:
        """``(lp, mask)`` of the given rows (answer targets only in the mask)."""
        return self.token_logprobs[rows], self.batch.tf.answer_mask[rows]


class UnlearningMethod:
    """Base class. Subclasses set the class attributes and override :meth:`forget_loss` (and mixins the retain)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    hyperparameters: ClassVar[dict[str, float]] = {}
    recipe: ClassVar[Recipe]
    needs_logits: ClassVar[bool] = True
    #: Name of the retain term ("nll", "kl", "rmu") or None.
    retain_term: ClassVar[str | None] = None

    def __init__(self, **overrides: float | None) -> None:
        unknown = sorted(k for k, v in overrides.items() if v is not None and k not in self.hyperparameters)
        if unknown:
            usable = ", ".join(self.hyperparameters) or "none"
            raise InputError(
                f"method {self.name}: hyperparameter(s) {', '.join(unknown)} do not apply (it takes: {usable})"
            )
        self.hp: dict[str, float] = dict(self.hyperparameters)
        self.hp.update({k: v for k, v in overrides.items() if v is not None})
        for key, value in self.hp.items():
            if not math.isfinite(float(value)):
                raise InputError(f"method {self.name}: {key} must be a finite number, got {value}")
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        """Raise :class:`InputError` for impossible values (model-independent checks)."""
        if self.hp.get("alpha", 0.0) < 0:
            raise InputError(f"method {self.name}: alpha must be >= 0, got {self.hp['alpha']}")
        if "beta" in self.hp and self.hp["beta"] <= 0:
            raise InputError(f"method {self.name}: beta must be > 0, got {self.hp['beta']}")

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v:g}" for k, v in self.hp.items())
        return f"{type(self).__name__}({hp})"

    # -- what the loop asks ----------------------------------------------------------------------------------------
    @property
    def needs_retain(self) -> bool:
        """True when the objective has a retain term with a non-zero weight (so retain items are required)."""
        return self.retain_term is not None and self.hp.get("alpha", 0.0) > 0

    def check_model(self, model: "HookedLM") -> None:
        """Raise :class:`InputError` if the method cannot run on ``model`` (e.g. a layer out of range)."""

    def default_trainable(self, model: "HookedLM") -> str | None:
        """Regex over HF parameter names selecting the trainable parameters by default (None = all)."""
        return None

    def cache_hooks(self, model: "HookedLM") -> list[str]:
        """Hook names whose activations the policy forward must record (with grad)."""
        return []

    def extra_targets(self, seed: int, slot: int, batch_size: int) -> "Sequence[TrainTarget]":
        """Rows appended to micro-batch ``slot`` after the forget and retain rows (a pure function of the arguments,
        so resumed and multi-process runs draw the same rows). Default: none."""
        return ()

    def interventions(self, model: "HookedLM", batch: "StepBatch") -> "Sequence[Intervention]":
        """Interventions active in the policy forward of ``batch`` (default: none)."""
        return ()

    @property
    def weight_pass_labels(self) -> tuple[str, ...]:
        """Labels of the :meth:`extra_passes` this method will run (known from the hyperparameters alone, before
        :meth:`setup`, so that a run they cannot work in is refused before any work). Default: none."""
        return ()

    def extra_passes(self, step: int) -> "Sequence[WeightPass]":
        """Extra weight-replaced passes of every micro-batch of optimizer step ``step`` (0-based), run after its main
        backward (:class:`WeightPass`). Default: none. Called after :meth:`setup`; must be a pure function of the
        step and the setup (resumed and multi-process runs see the same passes). Not supported with ``fsdp``."""
        return ()

    def setup(self, model: "HookedLM", data: "UnlearningSet", *, seed: int, batch_size: int = 16) -> None:
        """Prepare reference quantities from the model BEFORE any update (runs again, on the base, when resuming)."""

    def teardown(self) -> None:
        """Drop what :meth:`setup` built (e.g. the frozen reference copy)."""

    # -- the objective ---------------------------------------------------------------------------------------------
    def forget_loss(self, out: PolicyOutput) -> Tensor:
        raise NotImplementedError

    def retain_loss(self, out: PolicyOutput) -> Tensor | None:
        return None

    def loss(self, out: PolicyOutput) -> LossTerms:
        """``L = L_forget + α·L_retain`` (the retain term only when there are retain rows and α > 0)."""
        forget = self.forget_loss(out)
        retain = self.retain_loss(out) if self.needs_retain and out.batch.n_retain else None
        total = forget if retain is None else forget + self.hp["alpha"] * retain
        return LossTerms(total, forget, retain)

    # -- after training --------------------------------------------------------------------------------------------
    transforms_weights: ClassVar[bool] = False

    def unlearned_weights(self, base: dict[str, Tensor], trained: dict[str, Tensor]) -> dict[str, Tensor]:
        """The unlearned model's weights given the base and trained ones (gradient methods: the trained ones)."""
        return trained

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "hyperparameters": dict(self.hp)}


# -- retain regularisers (mixins: put them BEFORE the forget method in the bases) ------------------------------------


class RetainNLL:
    """Gradient-descent retain term (GDR): ``L_retain = NLL(D_r)`` on the retain answers."""

    retain_term: ClassVar[str] = "nll"

    def retain_loss(self, out: PolicyOutput) -> Tensor:
        return losses.nll(*out.logprobs(out.batch.retain_rows))


class RetainKL:
    """KL retain term (KLR): ``L_retain = KL(p_ref ‖ p_θ)`` on the retain answer positions (frozen reference copy)."""

    retain_term: ClassVar[str] = "kl"
    reference: "HookedLM | None" = None

    def setup(self, model: "HookedLM", data: "UnlearningSet", *, seed: int, batch_size: int = 16) -> None:
        super().setup(model, data, seed=seed, batch_size=batch_size)  # type: ignore[misc]
        if self.needs_retain:  # type: ignore[attr-defined]
            self.reference = model.reference_copy()
            self.reference.hf.to(model.device)

    def teardown(self) -> None:
        self.reference = None
        super().teardown()  # type: ignore[misc]

    def retain_loss(self, out: PolicyOutput) -> Tensor:
        if self.reference is None:
            raise RuntimeError("setup() was not called")
        batch = out.batch
        rows = batch.retain_rows
        with torch.no_grad():
            ref_logits = self.reference.forward(batch.tf.input_ids[rows], logits_to_keep=batch.tf.keep).logits
        assert out.logits is not None
        return losses.kl_to_reference(out.logits[rows], ref_logits, batch.tf.answer_mask[rows])
