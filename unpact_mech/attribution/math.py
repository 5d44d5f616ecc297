"""Pure tensor math of the attribution methods: no model calls, no tokenizers, no I/O.

Every function documents its formula and shapes; the model-calling modules (occlusion, gradients, integrated
gradients, attention paths, residual stream) gather activations and hand them to these functions, and the unit
tests check each one on small hand-made tensors.

Notation: T positions, d = d_model, H heads, H_kv key/value heads, d_h = d_head, V vocabulary, J readout terms
(see :class:`~unpact_mech.attribution.targets.Readout`), U attribution units (question tokens or words).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from unpact_mech.models.arch import FinalNorm

# -- occlusion and unit aggregation ------------------------------------------------------------------------------


def occlusion_scores(values: Tensor) -> Tensor:
    """unPact scores from the target values of the n+1 variants.

    ``values`` (n+1,): ``values[0] = f(x)`` (the intact prompt), ``values[i] = f(x without unit i-1)``.
    Returns (n,): ``C_i = f(x) - f(x without unit i)`` (positive = the unit supports the answer).
    """
    return values[0] - values[1:]


def sum_over_units(per_position: Tensor, units: Sequence[Sequence[int]]) -> Tensor:
    """Aggregate per-position scores into units: ``out[..., u] = sum_{p in units[u]} per_position[..., p]``.

    ``per_position`` (..., T); ``units`` U lists of positions -> (..., U). Sum is the natural aggregator for
    additive attributions (gradient x input, integrated gradients, attention paths): the word's score is the
    share of the target its tokens account for together.
    """
    out = per_position.new_zeros(*per_position.shape[:-1], len(units))
    for u, positions in enumerate(units):
        if positions:
            out[..., u] = per_position[..., list(positions)].sum(-1)
    return out


# -- gradients ---------------------------------------------------------------------------------------------------


def grad_times_input(grad: Tensor, inputs: Tensor) -> Tensor:
    """Gradient x input per position: ``a_p = sum_k grad[p, k] * inputs[p, k]``.

    ``grad``, ``inputs`` (..., T, d) -> (..., T). For an activation hook with extra head axes, pass it with the
    feature axis last (e.g. (T, H, d_h) -> (T, H)).
    """
    return (grad * inputs).sum(-1)


def integration_rule(steps: int, rule: str = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Nodes ``alpha`` (S,) in [0, 1] and weights ``w`` (S,) with ``sum_k w_k g(alpha_k) ~ int_0^1 g(a) da``.

    * ``trapezoid``: S = ``steps`` equally spaced nodes including both ends, weights ``1/(S-1)`` (halved at the
      ends).
    * ``gausslegendre``: S = ``steps`` Gauss-Legendre nodes on [0, 1] (captum's default rule).
    """
    if steps < 2:
        raise ValueError("integration needs at least 2 steps")
    if rule == "trapezoid":
        alphas = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] *= 0.5
    elif rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = torch.from_numpy((nodes + 1) / 2), torch.from_numpy(w / 2)
    else:
        raise ValueError(f"unknown integration rule {rule!r} (trapezoid, gausslegendre)")
    return alphas.float(), weights.float()


def interpolate(baseline: Tensor, inputs: Tensor, alphas: Tensor, mask: Tensor) -> Tensor:
    """Straight-line path from ``baseline`` to ``inputs`` on the masked positions only.

    ``baseline``, ``inputs`` (T, d); ``alphas`` (S,); ``mask`` (T,) bool. Returns (S, T, d):
    ``e[k, p] = baseline[p] + alpha_k * (inputs[p] - baseline[p])`` where ``mask[p]``, else ``inputs[p]``.
    """
    path = baseline[None] + alphas[:, None, None] * (inputs - baseline)[None]
    return torch.where(mask[None, :, None], path, inputs[None].expand_as(path))


def path_average(grads: Tensor, weights: Tensor) -> Tensor:
    """Quadrature of the gradient along the path: ``sum_k w_k grad_k`` — grads (S, T, d), weights (S,) -> (T, d).

    Additive over chunks of steps, so chunked evaluation sums the chunks' results.
    """
    return torch.einsum("s,std->td", weights.to(grads), grads)


def integrated_gradients_from_average(mean_grad: Tensor, inputs: Tensor, baseline: Tensor) -> Tensor:
    """IG per position: ``IG_p = (x_p - b_p) . g_p`` with ``g = sum_k w_k grad_k`` (:func:`path_average`).

    ``mean_grad``, ``inputs``, ``baseline`` (T, d) -> (T,). Completeness: ``sum_p IG_p ~ f(x) - f(b)``, exact as
    the quadrature converges.
    """
    return ((inputs - baseline) * mean_grad).sum(-1)


def completeness(attributions: Tensor, f_input: float, f_baseline: float) -> dict[str, float]:
    """Completeness check of path attributions: ``delta = sum_p a_p - (f(x) - f(b))``.

    Returns ``completeness_delta`` (absolute) and ``completeness_rel`` = ``|delta| / |f(x) - f(b)|``.
    """
    total = float(attributions.sum())
    gap = f_input - f_baseline
    delta = total - gap
    return {
        "completeness_delta": delta,
        "completeness_rel": abs(delta) / abs(gap) if gap != 0 else float("inf") if delta != 0 else 0.0,
    }


# -- final norm, readout directions, direct contributions -------------------------------------------------------


def norm_scale(x: Tensor, norm: FinalNorm) -> Tensor:
    """The final norm's input-dependent scale ``s(x)``: (..., d) -> (...).

    RMSNorm: ``s = 1 / sqrt(mean(x^2) + eps)``; LayerNorm: ``s = 1 / sqrt(var(x) + eps)`` (biased variance).
    Frozen at its value on the actual forward, the norm is linear: ``norm(x) = s * N(x) * w (+ b)`` with
    ``N`` the identity (RMS) or mean-centring (LayerNorm).
    """
    x = x.float()
    if norm.kind == "rms":
        return torch.rsqrt(x.pow(2).mean(-1) + norm.eps)
    return torch.rsqrt(x.var(-1, unbiased=False) + norm.eps)


def apply_final_norm(x: Tensor, norm: FinalNorm) -> Tensor:
    """The final norm itself (not frozen), as in the HF modules: (..., d) -> (..., d)."""
    s = norm_scale(x, norm)[..., None]
    if norm.kind == "rms":
        return x * s * norm.weight
    out = (x - x.mean(-1, keepdim=True)) * s * norm.weight
    return out + norm.bias if norm.bias is not None else out


def readout_directions(W_U: Tensor, tokens: Tensor, weights: Tensor, scales: Tensor, norm: FinalNorm) -> Tensor:
    """Residual-stream directions whose dot product with a component gives its direct contribution.

    ``W_U`` (d, V); readout ``tokens``, ``weights`` and frozen norm ``scales`` (J,). Returns (J, d):
    ``a_j = w_j * s_j * N(gamma * W_U[:, t_j])`` with N = mean-centring for LayerNorm (since
    ``(c - mean(c)) . u = c . (u - mean(u))``) and the identity for RMSNorm. Then for any residual component
    ``c`` (at the readout positions), its direct contribution to ``sum_j w_j logit_{t_j}`` is ``sum_j c_j . a_j``.
    """
    u = norm.weight[None, :] * W_U[:, tokens].T  # (J, d)
    if norm.kind == "layer":
        u = u - u.mean(-1, keepdim=True)
    return (weights * scales)[:, None] * u


def norm_bias_contribution(W_U: Tensor, tokens: Tensor, weights: Tensor, norm: FinalNorm) -> Tensor:
    """Constant term of the readout from the norm's bias: ``sum_j w_j b . W_U[:, t_j]`` (0 without a bias)."""
    if norm.bias is None:
        return torch.zeros((), dtype=W_U.dtype)
    return (weights * (norm.bias @ W_U[:, tokens])).sum()


def direct_contributions(components: Tensor, directions: Tensor) -> Tensor:
    """Direct contribution of each residual component: ``DLA_c = sum_j components[c, j] . directions[j]``.

    ``components`` (C, J, d) — each component's vector at the J readout positions; ``directions`` (J, d) from
    :func:`readout_directions`. Returns (C,). Summed over a complete decomposition of the final residual stream
    (embeddings + every attention and MLP output), plus :func:`norm_bias_contribution`, this is exactly
    ``sum_j w_j logit_{t_j}`` under the frozen norm scale.
    """
    return torch.einsum("cjd,jd->c", components.float(), directions.float())


def expand_kv_heads(v: Tensor, n_heads: int) -> Tensor:
    """Grouped-query attention: value vectors per KV head (..., H_kv, d_h) -> per query head (..., H, d_h).

    Head h reads KV head ``h // (H / H_kv)`` (HF ``repeat_kv`` order).
    """
    n_kv = v.shape[-2]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} heads are not a multiple of {n_kv} key/value heads")
    return v.repeat_interleave(n_heads // n_kv, dim=-2)


def head_source_contributions(pattern_rows: Tensor, v: Tensor, W_O: Tensor, directions: Tensor) -> Tensor:
    """Direct contribution of each (head, source position) of one attention layer.

    ``pattern_rows`` (H, J, T_k): attention of the J readout query positions to every key; ``v`` (T_k, H_kv, d_h)
    value vectors; ``W_O`` (H, d_h, d); ``directions`` (J, d). Returns (H, T_k)::

        C[h, s] = sum_j pattern[h, q_j, s] * (v[s, kv(h)] @ W_O[h]) . a_j

    Summed over h and s this equals ``sum_j (attn_out[q_j] - b_O) . a_j``, the layer's direct contribution
    without the output bias, because ``attn_out[q] = sum_h sum_s pattern[h, q, s] v[s, kv(h)] W_O[h] + b_O``.
    """
    n_heads = W_O.shape[0]
    v_heads = expand_kv_heads(v.float(), n_heads)  # (T_k, H, d_h)
    projected = torch.einsum("hed,jd->hje", W_O.float(), directions.float())  # (H, J, d_h)
    values = torch.einsum("the,hje->hjt", v_heads, projected)  # (H, J, T_k)
    return (pattern_rows.float() * values).sum(1)


# -- decoding helpers ---------------------------------------------------------------------------------------------


def tree_attention_mask(allowed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive 4D attention mask from a boolean (P, P) "query may attend key" matrix -> (1, 1, P, P).

    0 where allowed, the dtype's minimum elsewhere (what HF eager attention adds to the scores).
    """
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
