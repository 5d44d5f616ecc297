"""Unlearning objectives as pure functions: tensors in, a scalar loss (to MINIMISE) out. No model calls here.

Notation for a teacher-forced batch (see :func:`unpact_mech.scoring.batching.right_pad_teacher_forced`):

* ``lp[b, k] = log p_θ(t_{b,k} | prefix)`` — :func:`unpact_mech.scoring.logprob.token_logprobs` of the targets;
* ``m[b, k] = 1`` on the answer targets of row ``b`` (prompt, template and padding are never in the loss);
* ``|y_b| = Σ_k m[b, k]`` — answer length; ``S_θ(b) = Σ_k m[b, k]·lp[b, k] = log p_θ(y_b | x_b)`` — the answer's
  sequence log-probability.

Choices settled here once (each is tested in ``tests/unit/unlearning/test_losses.py``):

* **Answer tokens only.** Every log-prob term covers the answer tokens (the paper's LP is over answer tokens; on
  SmolLM2 the answer-only loss kept far more retain accuracy than a loss over the whole sentence: docs/concepts.md §14).
* **NLL is a token mean over the batch** (HF's causal-LM loss with labels on the answer): long answers weigh more.
* **NPO uses sequence log-probs** ``S_θ − S_ref`` (NPO paper's π(y|x); open-unlearning's ``compute_batch_nll`` sums
  too), NOT a per-token ratio averaged over tokens. The two differ as soon as ``|y| > 1``.
* **SimNPO** follows its paper: length-normalised ``S_θ/|y|`` with an additive margin γ inside the sigmoid.
  open-unlearning writes ``-(2/β)·log σ(β·(NLL/|y| − δ))``, i.e. its δ is our γ/β.
* **KL(p_ref ‖ p_θ)** is summed over the vocabulary and averaged over retain ANSWER positions (open-unlearning
  averages over every position of the row, template and padding included).
* **RMU's** ``‖h − c·u‖²`` is the mean squared error over the ``d_model`` coordinates (``F.mse_loss``, as in the
  WMDP code, which fixes the scale of c and α), averaged over the selected token positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def answer_lengths(mask: Tensor) -> Tensor:
    """``|y_b| = Σ_k m[b, k]`` — (B, K) mask -> (B,) float."""
    return mask.to(torch.float32).sum(-1)


def sequence_logprob(token_lp: Tensor, mask: Tensor) -> Tensor:
    """``S(b) = Σ_k m[b, k]·lp[b, k]`` = log p(y_b | x_b) — (B, K), (B, K) -> (B,)."""
    return (token_lp * mask.to(token_lp.dtype)).sum(-1)


def nll(token_lp: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood of the answers, a token mean over the batch.

    ``NLL = −(Σ_{b,k} m[b,k]·lp[b,k]) / (Σ_{b,k} m[b,k])``. Minimised by fine-tuning (GDR's retain term, the task
    vector's fine-tuning).
    """
    m = mask.to(token_lp.dtype)
    return -(token_lp * m).sum() / m.sum().clamp(min=1.0)


def gradient_ascent(token_lp: Tensor, mask: Tensor) -> Tensor:
    """Gradient ascent on the forget answers: ``L_GA = −NLL(D_f)`` (minimising it raises the NLL without bound)."""
    return -nll(token_lp, mask)


def kl_to_reference(policy_logits: Tensor, reference_logits: Tensor, mask: Tensor) -> Tensor:
    """``KL(p_ref ‖ p_θ)`` averaged over the answer positions.

    ``KL = (1/Σm) Σ_{b,k} m[b,k] Σ_v p_ref(v | b,k)·(log p_ref(v | b,k) − log p_θ(v | b,k))``, with
    ``p = softmax(logits)``. Logits (B, K, V); only masked positions are evaluated (so the (N, V) softmax is over the
    answer positions alone). Zero iff the two distributions agree at every answer position.
    """
    sel = mask.bool()
    if not bool(sel.any()):
        return policy_logits.sum() * 0.0
    log_p = torch.log_softmax(policy_logits[sel].float(), dim=-1)
    log_ref = torch.log_softmax(reference_logits[sel].float(), dim=-1)
    return (log_ref.exp() * (log_ref - log_p)).sum(-1).mean()


def npo(policy_seq_lp: Tensor, reference_seq_lp: Tensor, beta: float) -> Tensor:
    """Negative preference optimisation on SEQUENCE log-probs.

    ``L_NPO = (2/β)·mean_b log(1 + (p_θ(y_b|x_b) / p_ref(y_b|x_b))^β) = (2/β)·mean_b softplus(β·(S_θ(b) − S_ref(b)))``.
    Equals ``2·log 2/β`` at θ = θ_ref; its gradient is GA's weighted by ``2·σ(β·(S_θ − S_ref))``, which vanishes as
    the answer's probability falls below the reference's (so NPO slows down instead of diverging). (B,), (B,) -> ().
    """
    return (2.0 / beta) * F.softplus(beta * (policy_seq_lp - reference_seq_lp)).mean()


def simnpo(policy_seq_lp: Tensor, lengths: Tensor, beta: float, gamma: float = 0.0) -> Tensor:
    """SimNPO: reference-free, length-normalised NPO with margin γ.

    ``L_SimNPO = −(2/β)·mean_b log σ(−(β/|y_b|)·S_θ(b) − γ) = (2/β)·mean_b softplus(β·S_θ(b)/|y_b| + γ)``.
    (B,), (B,) -> (). A larger γ keeps pushing answers that are already unlikely.
    """
    return (2.0 / beta) * F.softplus(beta * policy_seq_lp / lengths.clamp(min=1.0) + gamma).mean()


def masked_mse(h: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``(1/Σm) Σ_{b,t} m[b,t]·(1/d)·‖h[b,t] − target[b,t]‖²`` — h (B, T, d), target broadcastable, mask (B, T)."""
    sel = mask.bool()
    if not bool(sel.any()):
        return h.sum() * 0.0
    diff = (h - target.expand_as(h))[sel].float()
    return diff.pow(2).mean()


def rmu_forget(h: Tensor, mask: Tensor, control: Tensor) -> Tensor:
    """RMU forget term: steer the layer-ℓ residual of forget tokens to a fixed random direction.

    ``L_f = mean_{masked (b,t)} (1/d)·‖h_θ[b,t] − c·u‖²`` with ``control = c·u`` (d,), ``u`` a random unit vector.
    """
    return masked_mse(h, control.to(h.dtype).view(1, 1, -1), mask)


def rmu_retain(h: Tensor, h_reference: Tensor, mask: Tensor) -> Tensor:
    """RMU retain term: keep the layer-ℓ residual of retain tokens where the frozen reference has it.

    ``L_r = mean_{masked (b,t)} (1/d)·‖h_θ[b,t] − h_ref[b,t]‖²`` (weighted by α in the method).
    """
    return masked_mse(h, h_reference.detach(), mask)


def weighted_rmu_forget(h: Tensor, mask: Tensor, weights: Tensor, control: Tensor) -> Tensor:
    """RMU forget term with per-position weights (``keyguard``'s attribution weighting).

    ``L_f = Σ_{b,t} m[b,t]·w[b,t]·(1/d)‖h_θ[b,t] − c·u‖² / Σ_{b,t} m[b,t]·w[b,t]`` — h (B, T, d), mask and
    weights (B, T). With ``w ≡ 1`` it is :func:`rmu_forget` (up to float rounding).
    """
    w = weights.to(torch.float32) * mask.to(torch.float32)
    total = w.sum()
    if not bool(total > 0):
        return h.sum() * 0.0
    per_position = (h.float() - control.float().view(1, 1, -1)).pow(2).mean(-1)  # (B, T)
    return (per_position * w).sum() / total


def smoothed_weight(w: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """A randomly perturbed copy of a weight matrix (``keyguard``'s relearning-smoothing pass).

    ``W̃ = W + σ·rms(W)·ε`` with ``rms(W) = sqrt(mean_ij W_ij²)`` and ``ε`` of W's shape (standard normal in use), so
    the noise is σ relative to the matrix's own scale. Computed in float32, returned in W's dtype and shape.
    """
    w32 = w.float()
    return (w32 + sigma * w32.pow(2).mean().sqrt() * noise.float()).to(w.dtype)
