"""The losses' edges the mutator (tools/mutate.py) found unpinned: the rewards each loss reports
(chosen and rejected, with a reference away from 0), β-DPO alone on small batches and its
filter's σ taken from the batch, ... Known answers derived by hand; fp32."""

from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

from dpokit.losses import LossParams, get_loss

C = torch.tensor([-1.0, -2.0, -0.5, -3.0])
R = torch.tensor([-2.0, -1.5, -2.5, -3.5])
RC = torch.tensor([-1.5, -1.0, -1.0, -2.0])
RR = torch.tensor([-1.0, -2.0, -2.0, -4.0])


def test_beta_dpo_reports_the_base_betas_rewards_of_each_answer():
    out = get_loss("beta_dpo").fn(C, R, RC, RR, LossParams(beta=0.3, beta_dpo_rho=0.0))
    torch.testing.assert_close(out.chosen_rewards, 0.3 * (C - RC))
    torch.testing.assert_close(out.rejected_rewards, 0.3 * (R - RR))


def test_beta_dpo_on_one_pair_is_dpo_at_the_base_beta():
    """One pair: it is kept (at least one is), weighs 1, and its own mean is M0, so β_b = β."""
    fn = get_loss("beta_dpo").fn
    for rho in (0.0, 0.2, 0.9):
        out = fn(C[:1], R[:1], RC[:1], RR[:1], LossParams(beta=0.3, beta_dpo_rho=rho))
        h = (C[0] - RC[0]) - (R[0] - RR[0])
        torch.testing.assert_close(out.losses, -logsigmoid(0.3 * h).reshape(1))


def test_beta_dpo_alone_filters_around_its_batchs_own_mean_and_spread():
    """Without the objective's statistics the filter's M0 and σ are the batch's: seven pairs
    at h = 0 and one at h = 100 (M0 12.5, σ 35.4): dropping one pair of eight, the outlier is
    the one dropped far more often than chance (1/8)."""
    fn = get_loss("beta_dpo").fn
    chosen = torch.tensor([0.0] * 7 + [100.0])
    zeros = torch.zeros(8)
    kept_outlier = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out = fn(chosen, zeros, zeros, zeros, LossParams(beta=0.1, beta_dpo_rho=0.125))
        kept_outlier += int(out.losses[7] != 0)
    assert kept_outlier < 0.5 * 40  # uniform draws (no spread) would keep it 7 times in 8


def _args(spec, n=4):
    extras = {"chosen_tokens": torch.full((n,), 3.0), "rejected_tokens": torch.full((n,), 5.0)}
    for column in spec.extra_columns:
        extras[column] = torch.zeros(n)
    if "level_overridden" in extras:
        extras["level_overridden"] = torch.ones(n)
    if spec.unpaired:
        extras["label"] = torch.tensor([1.0, 0.0] * (n // 2))
    return extras


def test_every_loss_reports_its_rewards_detached():
    """The rewards are figures to log: no graph hangs on them (the losses carry it)."""
    from dpokit.losses import available_losses

    for name, spec in sorted(available_losses().items()):
        c, r = C.clone().requires_grad_(True), R.clone().requires_grad_(True)
        out = spec.fn(c, r, RC, RR, LossParams(), _args(spec))
        assert out.losses.requires_grad, name
        assert not out.chosen_rewards.requires_grad, name
        assert not out.rejected_rewards.requires_grad, name


# the losses whose reported rewards are not β·(log π - log π_ref) of each answer, and why
OTHER_REWARDS = {
    "kto": "unpaired: the completion's and the KL sample's log-ratios",
    "apo_zero_unpaired": "unpaired: the completion's and the KL sample's log-ratios",
}


def test_each_reference_loss_reports_beta_times_each_answers_log_ratio():
    from dpokit.losses import available_losses

    for name, spec in sorted(available_losses().items()):
        if not spec.needs_reference or spec.name in OTHER_REWARDS or name != spec.name:
            continue
        out = spec.fn(C, R, RC, RR, LossParams(beta=0.3), _args(spec))
        torch.testing.assert_close(out.chosen_rewards, 0.3 * (C - RC), msg=name)
        torch.testing.assert_close(out.rejected_rewards, 0.3 * (R - RR), msg=name)


def test_cal_dpo_pulls_each_log_ratio_to_plus_or_minus_one_over_two_beta():
    """β = 0.25: targets ±2; at log-ratios (2, -2) only the contrastive term is left."""
    fn = get_loss("cal_dpo").fn
    zeros = torch.zeros(1)
    out = fn(torch.tensor([2.0]), torch.tensor([-2.0]), zeros, zeros, LossParams(beta=0.25))
    torch.testing.assert_close(out.losses, -logsigmoid(torch.tensor([4.0])))
    out = fn(torch.tensor([1.0]), torch.tensor([0.0]), zeros, zeros, LossParams(beta=0.25))
    torch.testing.assert_close(out.losses, -logsigmoid(torch.tensor([1.0])) + 1.0 + 4.0)


def test_gw_dpo_refuses_a_batch_with_any_pair_out_of_order_and_declares_its_levels():
    import pytest

    from dpokit.losses.gravity import gap_and_privilege
    from dpokit.losses.registry import _PARAMS

    ok = gap_and_privilege(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0]), levels=5)
    assert all(torch.isfinite(t).all() for t in ok)
    for obeyed, overridden in (([0.0, 2.0], [1.0, 1.0]), ([0.0, 1.0], [1.0, 5.0])):
        with pytest.raises(ValueError, match="levels must satisfy"):
            gap_and_privilege(torch.tensor(obeyed), torch.tensor(overridden), levels=5)
    levels = _PARAMS["gw_levels"]
    assert levels.check(2.0) is None and levels.check(1.5) is not None
