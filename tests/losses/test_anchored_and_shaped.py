"""DPOP, Cal-DPO, SimPER and AlphaPO on hand-derived numbers, and the properties each is for:
DPOP is DPO until the chosen log-prob falls below the reference's; Cal-DPO's gradient raises
the chosen log-ratio even when the margin is already large; SimPER reads no hyper-parameter;
AlphaPO at alpha = 0 is SimPO."""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.losses import LossParams, get_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_dpop_is_dpo_until_the_chosen_falls_below_the_reference():
    params = LossParams(beta=0.5, dpop_lambda=2.0)
    dpop, dpo = get_loss("dpop").fn, get_loss("sigmoid").fn
    up = (t(-1.0), t(-5.0), t(-2.0), t(-2.0))  # chosen above its reference: no penalty
    assert dpop(*up, params).losses.item() == pytest.approx(dpo(*up, params).losses.item())
    # chosen 1 nat below its reference: h = (-1) - (-3) = 2, penalty 2 * 1: -log σ(0.5 * 0)
    down = dpop(t(-3.0), t(-5.0), t(-2.0), t(-2.0), params)
    assert down.losses.item() == pytest.approx(math.log(2))
    assert down.chosen_rewards.item() == pytest.approx(-0.5)  # β · log-ratio, detached


def test_cal_dpo_by_hand_and_its_gradient_raises_the_chosen():
    beta = 0.5  # targets ±1/(2β) = ±1
    chosen, rejected = t(-2.0), t(-6.0)
    out = get_loss("cal_dpo").fn(chosen, rejected, t(-2.0), t(-3.0), LossParams(beta=beta))
    r_w, r_l = 0.0, -3.0  # log-ratios
    by_hand = -math.log(1 / (1 + math.exp(-(r_w - r_l)))) + (r_w - 1) ** 2 + (r_l + 1) ** 2
    assert out.losses.item() == pytest.approx(by_hand)
    out.losses.sum().backward()
    assert chosen.grad.item() < 0  # a large margin already, yet descent raises log π(y_w)


def test_simper_by_hand_reads_no_hyper_parameter():
    spec = get_loss("simper")
    assert spec.length_normalized and not spec.needs_reference
    out = spec.fn(t(-1.0), t(-2.0), None, None, LossParams(beta=123.0))
    assert out.losses.item() == pytest.approx(-math.exp(-1) + math.exp(-2))
    assert out.chosen_rewards.item() == pytest.approx(math.exp(-1))


def test_alphapo_by_hand_and_at_alpha_zero_is_simpo():
    spec = get_loss("alphapo")
    out = spec.fn(t(-1.0), t(-2.0), None, None,
                  LossParams(beta=2.0, alphapo_alpha=0.5, simpo_gamma=0.5))
    r_w, r_l = 4 * (1 - math.exp(0.5)), 4 * (1 - math.exp(1.0))  # (β/α)(1 - e^{-α avg})
    assert out.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-(r_w - r_l - 0.5)))))
    args = (t(-0.7, -1.3), t(-1.1, -0.9), None, None)
    zero = spec.fn(*args, LossParams(beta=2.0, alphapo_alpha=0.0, simpo_gamma=0.5))
    simpo = get_loss("simpo").fn(*args, LossParams(beta=2.0, simpo_gamma=0.5))
    torch.testing.assert_close(zero.losses, simpo.losses)
    near = spec.fn(*args, LossParams(beta=2.0, alphapo_alpha=1e-6, simpo_gamma=0.5))
    torch.testing.assert_close(near.losses, simpo.losses, atol=1e-5, rtol=0)  # continuous at 0
