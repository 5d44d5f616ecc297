"""The pure tensor math on small hand-made tensors (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from unpact_mech.attribution import math as am
from unpact_mech.attribution.packing import ablate, pack_variants, packed_length, variant_prompts
from unpact_mech.models.arch import FinalNorm


def test_occlusion_scores_and_unit_sums():
    values = torch.tensor([1.0, 0.25, 1.5, -2.0])
    assert am.occlusion_scores(values).tolist() == [0.75, -0.5, 3.0]
    per_pos = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 1.0]])
    out = am.sum_over_units(per_pos, [[0], [1, 2], [], [3]])
    assert out.tolist() == [[1.0, 5.0, 0.0, 4.0], [0.0, 1.0, 0.0, 1.0]]


def test_grad_times_input_reduces_the_last_axis():
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    x = torch.tensor([[2.0, 0.5], [1.0, 1.0]])
    assert am.grad_times_input(g, x).tolist() == [3.0, 2.0]
    assert am.grad_times_input(torch.ones(3, 2, 4), torch.ones(3, 2, 4)).shape == (3, 2)


@pytest.mark.parametrize("rule", ["trapezoid", "gausslegendre"])
def test_integration_rules(rule):
    alphas, w = am.integration_rule(9, rule)
    assert alphas.shape == w.shape == (9,) and alphas.min() >= 0 and alphas.max() <= 1
    assert abs(float(w.sum()) - 1.0) < 1e-6  # integrates constants exactly
    assert abs(float((w * alphas).sum()) - 0.5) < 1e-6  # and linear functions
    if rule == "trapezoid":
        assert alphas[0] == 0 and alphas[-1] == 1
        assert abs(float((w * alphas**2).sum()) - 1 / 3) < 5e-3
    else:  # 9-node Gauss-Legendre is exact up to degree 17
        assert abs(float((w.double() * alphas.double() ** 7).sum()) - 1 / 8) < 1e-6
    with pytest.raises(ValueError):
        am.integration_rule(1, rule)


def test_interpolate_moves_only_masked_positions():
    x, b = torch.ones(3, 2), torch.zeros(3, 2)
    mask = torch.tensor([False, True, True])
    path = am.interpolate(b, x, torch.tensor([0.0, 0.25, 1.0]), mask)
    assert path.shape == (3, 3, 2)
    assert torch.equal(path[:, 0], torch.ones(3, 2))  # unmasked: real input at every step
    assert path[1, 1].tolist() == [0.25, 0.25] and torch.equal(path[0, 2], b[2]) and torch.equal(path[2, 2], x[2])


def test_ig_of_a_quadratic_is_exact_with_gauss_legendre():
    """f(e) = sum(c * e^2): IG_p = c_p (x_p^2 - b_p^2) exactly (integrand linear in alpha)."""
    c = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    x, b = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    alphas, w = am.integration_rule(4, "gausslegendre")
    path = am.interpolate(b, x, alphas, torch.tensor([True, True]))
    grads = 2 * c * path  # d/de of c e^2
    ig = am.integrated_gradients_from_average(am.path_average(grads, w), x, b)
    expected = (c * (x**2 - b**2)).sum(-1)
    assert torch.allclose(ig, expected, atol=1e-6)
    f = lambda e: float((c * e**2).sum())
    comp = am.completeness(ig, f(x), f(b))
    assert abs(comp["completeness_delta"]) < 1e-5 and comp["completeness_rel"] < 1e-5
    assert am.completeness(torch.tensor([1.0]), 2.0, 2.0)["completeness_rel"] == math.inf


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_final_norm_and_frozen_readout_match_the_modules(kind):
    g = torch.Generator().manual_seed(0)
    d, V = 8, 11
    weight, bias = torch.rand(d, generator=g) + 0.5, (torch.randn(d, generator=g) if kind == "layer" else None)
    norm = FinalNorm(kind, weight, bias, 1e-5)
    if kind == "rms":
        module = torch.nn.RMSNorm(d, eps=1e-5)
    else:
        module = torch.nn.LayerNorm(d, eps=1e-5)
        module.bias.data = bias
    module.weight.data = weight
    x = torch.randn(3, d, generator=g) * 4
    assert torch.allclose(am.apply_final_norm(x, norm), module(x), atol=1e-5)
    # a decomposition x = c1 + c2 + c3: sum of direct contributions (+ bias term) = the logit
    W_U = torch.randn(d, V, generator=g)
    tokens, weights = torch.tensor([2, 7, 7]), torch.tensor([0.5, 0.25, 0.25])
    parts = torch.randn(3, 3, d, generator=g)  # (C, J, d)
    resid = parts.sum(0)
    dirs = am.readout_directions(W_U, tokens, weights, am.norm_scale(resid, norm), norm)
    dla = am.direct_contributions(parts, dirs)
    logits = module(resid) @ W_U
    readout = (weights * logits[torch.arange(3), tokens]).sum()
    total = dla.sum() + am.norm_bias_contribution(W_U, tokens, weights, norm)
    assert torch.allclose(total, readout, atol=1e-4)


def test_head_source_contributions_equal_a_loop_with_gqa():
    g = torch.Generator().manual_seed(1)
    H, H_kv, T, dh, d, J = 4, 2, 5, 3, 6, 2
    pattern = torch.softmax(torch.randn(H, J, T, generator=g), -1)
    v = torch.randn(T, H_kv, dh, generator=g)
    W_O = torch.randn(H, dh, d, generator=g)
    dirs = torch.randn(J, d, generator=g)
    got = am.head_source_contributions(pattern, v, W_O, dirs)
    want = torch.zeros(H, T)
    for h in range(H):
        kv = h // (H // H_kv)  # HF repeat_kv order
        for s in range(T):
            for j in range(J):
                want[h, s] += pattern[h, j, s] * (v[s, kv] @ W_O[h]) @ dirs[j]
    assert torch.allclose(got, want, atol=1e-5)
    assert am.expand_kv_heads(v, H)[:, 1].equal(v[:, 0]) and am.expand_kv_heads(v, H)[:, 2].equal(v[:, 1])


def test_ablate_and_variants():
    prompt = [10, 11, 12, 13, 14]
    assert ablate(prompt, [1, 2], "delete") == [10, 13, 14]
    assert ablate(prompt, [3], "replace", 0) == [10, 11, 12, 0, 14]
    assert variant_prompts(prompt, [[1], [4]], "delete") == [prompt, [10, 12, 13, 14], [10, 11, 12, 13]]
    with pytest.raises(ValueError):
        ablate(prompt, [1], "replace")


def test_pack_variants_layout():
    """Trunk + one branch per unit; branches see only their shared prefix; predictors point at the right slots."""
    prompt, answer = [1, 2, 3, 4], [8, 9]
    packed = pack_variants(prompt, answer, [[1], [2, 3]], "delete")
    # trunk: 1 2 3 4 8 (the last answer token is never an input); branch 1: 3 4 8 at positions 1..3;
    # branch 2 (delete 3, 4): 8 at position 2
    assert packed.input_ids.tolist() == [1, 2, 3, 4, 8, 3, 4, 8, 8]
    assert packed.position_ids.tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 2]
    assert len(packed) == packed_length(4, 2, [[1], [2, 3]], "delete")
    A = packed.allowed
    assert A[5].tolist() == [True, False, False, False, False, True, False, False, False]  # prefix [1] + itself
    assert A[8].tolist() == [True, True] + [False] * 6 + [True]
    assert not A[:5, 5:].any()  # the trunk never sees a branch
    # original predicts answer tokens from positions 3 (token 4) and 4 (token 8)
    assert packed.predictors.tolist() == [[3, 4], [6, 7], [1, 8]]
    mask = am.tree_attention_mask(A)
    assert mask.shape == (1, 1, 9, 9) and mask[0, 0, 5, 0] == 0 and mask[0, 0, 5, 1] == torch.finfo(torch.float32).min
