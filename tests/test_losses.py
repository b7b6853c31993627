"""Each loss against numbers derived by hand, plus gradient and property checks.

Shared case (unless a test says otherwise): policy log-probs chosen = -1, rejected = -2;
reference log-probs both -1.5. Log-ratios: chosen +0.5, rejected -0.5, so h = 1.
"""

import math

import pytest
import torch

from dpokit.losses import LossParams, available_losses, get_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def case(dtype=torch.float64, requires_grad=False):
    t = lambda v: torch.tensor([v], dtype=dtype, requires_grad=requires_grad)  # noqa: E731
    return t(-1.0), t(-2.0), t(-1.5), t(-1.5)


def run(name, params, *tensors):
    spec = get_loss(name)
    return spec.fn(*tensors, params)


def test_sigmoid_hand_derived():
    """-log σ(β h) = softplus(-β h); β=0.1, h=1 -> softplus(-0.1) = 0.644397.
    Rewards: β·(±0.5) = ±0.05."""
    out = run("sigmoid", LossParams(beta=0.1), *case())
    assert out.losses.item() == pytest.approx(softplus(-0.1), abs=1e-12)
    assert out.losses.item() == pytest.approx(0.6443967, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.05)
    assert out.rejected_rewards.item() == pytest.approx(-0.05)


def test_cdpo_hand_derived():
    """(1-ε)·softplus(-z) + ε·softplus(z), z=β h=0.1, ε=0.25.
    softplus(z) = softplus(-z) + z, so the loss = softplus(-0.1) + 0.25·0.1 = 0.669397."""
    out = run("cdpo", LossParams(beta=0.1, label_smoothing=0.25), *case())
    assert out.losses.item() == pytest.approx(0.6443967 + 0.025, abs=1e-6)


def test_robust_hand_derived():
    """[(1-ε)·softplus(-z) - ε·softplus(z)] / (1-2ε), z=0.1, ε=0.25:
    (0.75·0.6443967 - 0.25·0.7443967) / 0.5 = 0.5943967."""
    out = run("robust", LossParams(beta=0.1, label_smoothing=0.25), *case())
    assert out.losses.item() == pytest.approx(0.5943967, abs=1e-6)


def test_robust_with_zero_smoothing_equals_sigmoid():
    torch.manual_seed(0)
    x = [torch.randn(7, dtype=torch.float64) for _ in range(4)]
    a = run("robust", LossParams(beta=0.3, label_smoothing=0.0), *x)
    b = run("sigmoid", LossParams(beta=0.3), *x)
    torch.testing.assert_close(a.losses, b.losses)
    c = run("cdpo", LossParams(beta=0.3, label_smoothing=0.0), *x)
    torch.testing.assert_close(c.losses, b.losses)


def test_robust_rejects_half_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        run("robust", LossParams(label_smoothing=0.5), *case())


def test_ipo_hand_derived():
    """(h - 1/(2β))², β=0.1, h=1 -> (1 - 5)² = 16."""
    out = run("ipo", LossParams(beta=0.1), *case())
    assert out.losses.item() == pytest.approx(16.0)
    assert not get_loss("ipo").length_normalized
    assert get_loss("ipo_norm").length_normalized


def test_ipo_norm_length_averaging_in_trainer():
    """ipo_norm divides log-probs by completion lengths before the same formula:
    chosen -4 over 4 tokens -> -1, rejected -4 over 2 -> -2, refs -6/4=-1.5 and -3/2=-1.5,
    so h = 1 again and the loss is 16 for β=0.1."""
    from dpokit.policy import PairLogps
    from dpokit.trainer import loss_inputs

    spec = get_loss("ipo_norm")
    logps = PairLogps(torch.tensor([-4.0]), torch.tensor([-4.0]), torch.tensor([4]), torch.tensor([2]))
    args = loss_inputs(spec, logps, torch.tensor([-6.0]), torch.tensor([-3.0]))
    out = spec.fn(*args, LossParams(beta=0.1))
    assert out.losses.item() == pytest.approx(16.0)


def test_hinge_hand_derived():
    """max(0, 1 - β h): β=0.1 -> 0.9; β=2 -> 0 (margin already met)."""
    assert run("hinge", LossParams(beta=0.1), *case()).losses.item() == pytest.approx(0.9)
    assert run("hinge", LossParams(beta=2.0), *case()).losses.item() == 0.0


def test_simpo_hand_derived():
    """-log σ(β(avg_w - avg_l) - γ), avg_w=-1, avg_l=-2, β=2, γ=0.5: softplus(-1.5)=0.201413.
    Rewards are β·avg log-prob: -2 and -4. No reference is read."""
    out = get_loss("simpo").fn(torch.tensor([-1.0]), torch.tensor([-2.0]), None, None,
                               LossParams(beta=2.0, simpo_gamma=0.5))
    assert out.losses.item() == pytest.approx(softplus(-1.5), abs=1e-6)
    assert out.losses.item() == pytest.approx(0.2014133, abs=1e-6)
    assert out.chosen_rewards.item() == -2.0 and out.rejected_rewards.item() == -4.0


def test_sigmoid_gradient_matches_closed_form():
    """d/d logπ(y_w) of -log σ(β h) is -β σ(-β h); for the rejected it is +β σ(-β h)."""
    chosen, rejected, ref_c, ref_r = case(requires_grad=True)
    out = run("sigmoid", LossParams(beta=0.1), chosen, rejected, ref_c.detach(), ref_r.detach())
    out.losses.sum().backward()
    expected = 0.1 * torch.sigmoid(torch.tensor(-0.1, dtype=torch.float64))
    assert chosen.grad.item() == pytest.approx(-expected.item())
    assert rejected.grad.item() == pytest.approx(expected.item())


NAMES = sorted({spec.name for spec in available_losses().values()})


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    """Autograd matches finite differences for every registered loss (float64, random case)."""
    spec = get_loss(name)
    torch.manual_seed(1)
    chosen = torch.randn(5, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(5, dtype=torch.float64, requires_grad=True)
    refs = (torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64))
    if not spec.needs_reference:
        refs = (None, None)
    params = LossParams(beta=0.7, label_smoothing=0.1, simpo_gamma=0.3)
    fn = lambda c, r: spec.fn(c, r, *refs, params).losses  # noqa: E731
    assert torch.autograd.gradcheck(fn, (chosen, rejected))


@pytest.mark.parametrize("name", NAMES)
def test_rewards_detached_and_loss_decreases_with_chosen_ratio(name):
    spec = get_loss(name)
    params = LossParams(beta=0.1, label_smoothing=0.1, simpo_gamma=0.3)
    rejected = torch.tensor([-2.0])
    refs = (torch.tensor([-1.5]), torch.tensor([-1.5])) if spec.needs_reference else (None, None)
    values = []
    for c in (-3.0, -2.0, -1.0, 0.0):
        chosen = torch.tensor([c], requires_grad=True)
        out = spec.fn(chosen, rejected, *refs, params)
        assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
        assert out.losses.requires_grad
        values.append(out.losses.item())
    assert all(a >= b for a, b in zip(values, values[1:])), values
    assert values[0] > values[-1]


def test_unknown_loss_suggests_nearest():
    with pytest.raises(KeyError, match="Did you mean 'sigmoid'"):
        get_loss("sigmod")


def test_import_needs_only_torch():
    import subprocess
    import sys

    code = ("import sys, dpokit.losses; heavy = [m for m in ('transformers', 'peft', 'accelerate',"
            " 'datasets') if m in sys.modules]; print(heavy); assert not heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
