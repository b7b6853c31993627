"""Statistics carried across steps (BCO's running δ, β-DPO's moving M0 and σ) and β-DPO's
filter and batch β, with hand-derived numbers."""

import math

import pytest
import torch
from torch.nn.functional import logsigmoid

from dpokit.core import PairLogps
from dpokit.losses import LossParams, Statistic, get_loss
from dpokit.objectives import PreferenceObjective
from dpokit.objectives.statistics import StatisticTracker


def _values(*_):
    return None


def test_the_running_mean_is_the_mean_of_every_value_seen_in_training():
    """Chan's merge of [1, 3] then [8]: mean 4, M2 = 9 + 1 + 16 = 26; evaluation reads it
    without moving it; before any training step evaluation uses the batch's own mean."""
    tracker = StatisticTracker(Statistic("d", _values, "running"))
    assert tracker.observe(torch.tensor([5.0, 7.0]), training=False)["d"].item() == 6.0
    assert tracker.count == 0
    assert tracker.observe(torch.tensor([1.0, 3.0]), training=True)["d"].item() == 2.0
    assert tracker.observe(torch.tensor([8.0]), training=True)["d"].item() == 4.0
    assert tracker.m2.item() == pytest.approx(26.0)
    assert tracker.observe(torch.tensor([100.0]), training=False)["d"].item() == 4.0
    assert tracker.count.item() == 3


def test_the_moving_averages_start_at_zero_and_update_before_use():
    """γ = 0.9: [1, 3] gives M0 = 0.1·2, σ = 0.1·√2; then [5, 5]: M0 = 0.9·0.2 + 0.1·5,
    σ = 0.9·0.1·√2 + 0.1·0 (the authors' code)."""
    tracker = StatisticTracker(Statistic("g", _values, "ema", gamma=0.9))
    first = tracker.observe(torch.tensor([1.0, 3.0]), training=True)
    assert first["g"].item() == pytest.approx(0.2)
    assert first["g_std"].item() == pytest.approx(0.1 * math.sqrt(2))
    second = tracker.observe(torch.tensor([5.0, 5.0]), training=True)
    assert second["g"].item() == pytest.approx(0.68)
    assert second["g_std"].item() == pytest.approx(0.09 * math.sqrt(2))


def test_a_batch_statistic_is_the_mean_of_the_batch_only():
    tracker = StatisticTracker(Statistic("k", _values, "batch"))
    tracker.observe(torch.tensor([1.0, 3.0]), training=True)
    assert tracker.observe(torch.tensor([8.0]), training=True)["k"].item() == 8.0


def _pairs(seed: int, n: int = 4):
    torch.manual_seed(seed)
    c, r, rc, rr = (torch.randn(n) for _ in range(4))
    tokens = torch.full((n,), 3)
    return PairLogps(c, r, tokens, tokens), rc, rr


def _bco_by_hand(out: PairLogps, rc, rr, delta: float, beta: float = 0.1):
    r_w, r_l = beta * (out.chosen - rc), beta * (out.rejected - rr)
    return -logsigmoid(r_w - delta) - logsigmoid(-(r_l - delta))


def test_bco_delta_is_the_running_mean_of_all_rewards_seen_and_is_saved():
    """The second batch's δ is the mean of all 16 rewards of both batches (not its own 8);
    an objective restored from the state continues with it; evaluation does not move it."""
    objective = PreferenceObjective.from_names("bco_pair", None, LossParams(beta=0.1))
    first, second = _pairs(0), _pairs(1)
    objective.losses(*first, {})
    rewards = [0.1 * torch.cat([o.chosen - rc, o.rejected - rr]) for o, rc, rr in (first,
                                                                                    second)]
    running = torch.cat(rewards).mean().item()
    state = objective.state_dict()
    got = objective.losses(*second, {}).losses
    torch.testing.assert_close(got, _bco_by_hand(*second, running))
    own = _bco_by_hand(*second, rewards[1].mean().item())
    assert not torch.allclose(got, own, atol=1e-5)  # the batch mean would differ
    restored = PreferenceObjective.from_names("bco_pair", None, LossParams(beta=0.1))
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.losses(*second, {}).losses, got)
    restored.train(False)
    restored.losses(*_pairs(2), {})
    assert restored.trackers["bco_delta"].mean.item() == pytest.approx(running)
    with pytest.raises(ValueError, match="objective tracks"):
        restored.load_state_dict({})


def test_beta_dpo_keeps_the_pairs_near_m0_and_sets_beta_from_them():
    """h = [0, 0.1, 5, -5] around M0 = 0.05 with σ = 0.1: the two outliers have filter weight
    ~e^-1225 and are never drawn; ρ = 0.5 keeps 2 of 4, which weigh 4/2 each; the batch β is
    0.1·(1 + 0.6·(0.05 - 0.05)) = 0.1."""
    chosen, zeros = torch.tensor([0.0, 0.1, 5.0, -5.0]), torch.zeros(4)
    extras = {"beta_dpo_gap": torch.tensor(0.05), "beta_dpo_gap_std": torch.tensor(0.1)}
    params = LossParams(beta=0.1, beta_dpo_a=0.6, beta_dpo_rho=0.5)
    fn = get_loss("beta_dpo").fn
    for seed in range(20):
        torch.manual_seed(seed)
        out = fn(chosen, zeros, zeros, zeros, params, extras)
        expected = 2 * -logsigmoid(0.1 * chosen[:2])
        torch.testing.assert_close(out.losses, torch.cat([expected, torch.zeros(2)]))
    # ρ = 0: every pair kept, β = 0.1·(1 + 0.6·(mean h - M0)) = 0.1·(1 + 0.6·(0.025 - 0.05))
    params = LossParams(beta=0.1, beta_dpo_a=0.6, beta_dpo_rho=0.0)
    out = fn(chosen, zeros, zeros, zeros, params, extras)
    beta = 0.1 * (1 + 0.6 * (0.025 - 0.05))
    torch.testing.assert_close(out.losses, -logsigmoid(beta * chosen))
    assert out.chosen_rewards.tolist() == pytest.approx((0.1 * chosen).tolist())


def test_beta_dpo_through_the_objective_tracks_m0_and_sigma():
    """In the objective, M0 and σ come from the moving averages (first batch: 0.1 of its mean
    and std) and are logged as stat/ metrics."""
    objective = PreferenceObjective.from_names("beta_dpo", None,
                                               LossParams(beta=0.1, beta_dpo_rho=0.0))
    out, rc, rr = _pairs(3)
    objective.losses(out, rc, rr, {})
    h = (out.chosen - rc) - (out.rejected - rr)
    tracker = objective.trackers["beta_dpo_gap"]
    assert tracker.mean.item() == pytest.approx(0.1 * h.mean().item(), rel=1e-5)
    assert tracker.std.item() == pytest.approx(0.1 * h.std().item(), rel=1e-5)
    assert objective.pools_batch_stats is False  # the filter is random: no split is exact
