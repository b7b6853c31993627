"""Parity with TRL's own code where TRL has the loss: AlphaPO and SimPO (TRL's CPO trainer's
``cpo_loss``, called on the same per-token average log-probs). TRL 1.16 has no DPOP, SamPO,
β-DPO, Cal-DPO or SimPER, and its ``bco_pair`` dropped the reward shift (δ = 0 here: the
same loss); those are tested against hand-derived numbers in test_losses.py and
test_statistics.py."""

from types import SimpleNamespace

import pytest
import torch

from dpokit.losses import LossParams, get_loss

cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")


def _trl(loss_type: str, beta: float, gamma: float, alpha: float):
    """TRL's ``CPOTrainer.cpo_loss`` bound to the settings it reads."""
    settings = SimpleNamespace(alpha=alpha, beta=beta, simpo_gamma=gamma, loss_type=loss_type,
                               label_smoothing=0.0, accelerator=SimpleNamespace(device="cpu"))
    return lambda c, r: cpo.CPOTrainer.cpo_loss(settings, c, r)


@pytest.mark.parametrize("name,alpha", [("alphapo", 0.25), ("alphapo", -0.5), ("simpo", 0.0),
                                        ("alphapo", 0.0)])
def test_alphapo_and_simpo_equal_trl(name, alpha):
    torch.manual_seed(0)
    chosen = -0.1 - 2 * torch.rand(8, dtype=torch.float64)  # per-token average log-probs
    rejected = -0.1 - 2 * torch.rand(8, dtype=torch.float64)
    params = LossParams(beta=2.0, simpo_gamma=0.7, alphapo_alpha=alpha)
    ours = get_loss(name).fn(chosen, rejected, None, None, params, {})
    losses, chosen_rewards, rejected_rewards = _trl("simpo", 2.0, 0.7, alpha)(chosen, rejected)
    torch.testing.assert_close(ours.losses, losses)
    torch.testing.assert_close(ours.chosen_rewards, chosen_rewards)
    torch.testing.assert_close(ours.rejected_rewards, rejected_rewards)
