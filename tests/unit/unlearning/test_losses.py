"""Every loss against a hand computation on small tensors (and the settled discrepancies)."""

from __future__ import annotations

import math

import pytest
import torch

from unpact_mech.unlearning import losses

LP = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -9.0, -9.0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_sequence_logprob_and_lengths():
    assert losses.sequence_logprob(LP, MASK).tolist() == [-3.0, -0.5]
    assert losses.answer_lengths(MASK).tolist() == [2.0, 1.0]


def test_nll_is_a_token_mean_over_the_batch():
    # (1 + 2 + 0.5) / 3 answer tokens — not the mean of per-row means ((1.5 + 0.5) / 2 = 1.0)
    assert losses.nll(LP, MASK).item() == pytest.approx(3.5 / 3)
    assert losses.gradient_ascent(LP, MASK).item() == pytest.approx(-3.5 / 3)


def test_masked_positions_never_matter():
    garbage = LP.clone()
    garbage[~MASK] = -1e4
    assert losses.nll(garbage, MASK).item() == pytest.approx(losses.nll(LP, MASK).item())


def test_kl_to_reference_by_hand():
    # one answer position, vocabulary of 2: p_ref = (0.8, 0.2), p_θ = (0.5, 0.5)
    ref = torch.log(torch.tensor([[[0.8, 0.2], [0.3, 0.7]]]))
    pol = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    mask = torch.tensor([[True, False]])
    hand = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert losses.kl_to_reference(pol, ref, mask).item() == pytest.approx(hand, rel=1e-6)
    # both positions: the mean of the two KLs
    both = (hand + 0.3 * math.log(0.3 / 0.9) + 0.7 * math.log(0.7 / 0.1)) / 2
    assert losses.kl_to_reference(pol, ref, torch.ones_like(mask)).item() == pytest.approx(both, rel=1e-6)
    # direction: KL(p_ref || p_θ), not KL(p_θ || p_ref)
    reverse = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert abs(losses.kl_to_reference(pol, ref, mask).item() - reverse) > 1e-2
    assert losses.kl_to_reference(ref, ref, torch.ones_like(mask)).item() == pytest.approx(0.0, abs=1e-7)


def test_npo_by_hand_on_sequence_logprobs():
    beta = 0.5
    s_theta, s_ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    # (2/β)·mean log(1 + (p_θ/p_ref)^β) with p = exp(S)
    hand = (2 / beta) * sum(math.log(1 + (math.exp(a) / math.exp(b)) ** beta) for a, b in [(-1, -2), (-3, -2)]) / 2
    assert losses.npo(s_theta, s_ref, beta).item() == pytest.approx(hand, rel=1e-6)
    assert losses.npo(s_ref, s_ref, beta).item() == pytest.approx(2 * math.log(2) / beta, rel=1e-6)


def test_npo_gradient_is_ga_weighted_by_two_sigmoid():
    beta = 0.1
    s = torch.tensor([-1.0, -4.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0])
    losses.npo(s, ref, beta).backward()
    expected = 2 * torch.sigmoid(beta * (s.detach() - ref)) / 2  # d/dS_b of the batch mean
    assert torch.allclose(s.grad, expected, atol=1e-7)


def test_npo_uses_sequence_not_per_token_ratios():
    beta = 0.1
    lp = torch.tensor([[-0.1, -5.0]])
    ref = torch.tensor([[-0.1, -0.1]])
    mask = torch.ones_like(lp, dtype=torch.bool)
    seq = losses.npo(losses.sequence_logprob(lp, mask), losses.sequence_logprob(ref, mask), beta).item()
    per_token = ((2 / beta) * torch.nn.functional.softplus(beta * (lp - ref))).mean().item()
    assert seq == pytest.approx((2 / beta) * math.log(1 + math.exp(beta * -4.9)), rel=1e-6)
    assert abs(seq - per_token) > 0.1


def test_simnpo_by_hand():
    beta, gamma = 2.0, 0.5
    s, n = torch.tensor([-2.0, -6.0]), torch.tensor([2.0, 3.0])
    sigmoid = lambda z: 1 / (1 + math.exp(-z))
    # −(2/β)·mean log σ(−(β/|y|)·S − γ)
    hand = -(2 / beta) * sum(math.log(sigmoid(-(beta / ln) * sl - gamma)) for sl, ln in [(-2, 2), (-6, 3)]) / 2
    assert losses.simnpo(s, n, beta, gamma).item() == pytest.approx(hand, rel=1e-6)
    # length normalisation: doubling S and |y| together changes nothing
    assert losses.simnpo(2 * s, 2 * n, beta, gamma).item() == pytest.approx(hand, rel=1e-6)
    # a larger margin γ gives a larger loss (keeps pushing)
    assert losses.simnpo(s, n, beta, 2.0).item() > hand


def test_rmu_terms_by_hand():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # (B=1, T=3, d=2)
    mask = torch.tensor([[True, True, False]])
    control = torch.tensor([1.0, 0.0])
    # mean over 2 positions of (1/d)·‖h − c·u‖²: ((0² + 2²)/2 + (2² + 4²)/2) / 2
    assert losses.rmu_forget(h, mask, control).item() == pytest.approx((4 / 2 + 20 / 2) / 2)
    h_ref = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [0.0, 0.0]]])
    assert losses.rmu_retain(h, h_ref, mask).item() == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert losses.rmu_retain(h, h, mask).item() == 0.0


def test_empty_masks_give_zero_with_a_graph():
    logits = torch.randn(1, 2, 5, requires_grad=True)
    none = torch.zeros(1, 2, dtype=torch.bool)
    out = losses.kl_to_reference(logits, logits.detach(), none)
    assert out.item() == 0.0 and out.requires_grad


def test_weighted_rmu_forget_against_a_hand_computation():
    # d = 2; positions (0,0) and (0,1) selected, (1,0) not; control (1, 1)
    h = torch.tensor([[[1.0, 3.0], [0.0, 1.0]], [[9.0, 9.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True], [False, False]])
    control = torch.tensor([1.0, 1.0])
    # per-position mse: (0 + 4)/2 = 2 and (1 + 0)/2 = 0.5; weights 3 and 1 -> (3*2 + 0.5) / 4
    weights = torch.tensor([[3.0, 1.0], [7.0, 7.0]])
    assert losses.weighted_rmu_forget(h, mask, weights, control).item() == pytest.approx(6.5 / 4)
    ones = torch.ones(2, 2)
    assert losses.weighted_rmu_forget(h, mask, ones, control).item() == pytest.approx(
        losses.rmu_forget(h, mask, control).item()
    )
    assert losses.weighted_rmu_forget(h, torch.zeros(2, 2, dtype=torch.bool), ones, control).item() == 0.0
