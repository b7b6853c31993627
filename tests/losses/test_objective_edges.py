"""The preference objective's edges the mutator (tools/mutate.py) found unpinned: what a mixed
loss declares, and what it asks of the policy (WPO's sampling norm only for wpo=paper), with a
fake policy of known scores; fp32."""

from __future__ import annotations

import types

import pytest
import torch

from dpokit.core.protocols import PolicyCapabilities
from dpokit.core.types import SequenceScores
from dpokit.losses import LossParams
from dpokit.objectives import PreferenceObjective


@pytest.mark.parametrize("names, batch_level", [(["sigmoid", "beta_dpo"], True),
                                                (["beta_dpo", "sigmoid"], True),
                                                (["sigmoid", "sft"], False), ("bco_pair", True)])
def test_a_mix_is_batch_level_when_any_of_its_losses_is(names, batch_level):
    weights = [1.0, 1.0] if isinstance(names, list) else None
    objective = PreferenceObjective.from_names(names, weights, LossParams())
    assert objective.batch_level is batch_level


class Fake:
    """Two pairs: chosen log-probs -1, -2, rejected -3, -4; records what it was asked."""

    def __init__(self, token_distribution=True):
        self.capabilities = PolicyCapabilities(reference="copy",
                                               token_distribution=token_distribution)
        self.asked = []

    def logps(self, batch, sampling_norm=False):
        self.asked.append(sampling_norm)
        tokens = torch.tensor([2, 3, 4, 5])
        norm = torch.tensor([-0.5, -0.5, -0.5, -0.5]) if sampling_norm else None
        return SequenceScores(torch.tensor([-1.0, -2.0, -3.0, -4.0]), tokens, norm)


BATCH = types.SimpleNamespace(example_index=torch.tensor([0, 1]), extras={})


@pytest.mark.parametrize("wpo, asked", [("off", False), ("mean", False), ("paper", True)])
def test_only_wpo_paper_asks_the_policy_for_its_sampling_norm(wpo, asked):
    policy = Fake()
    objective = PreferenceObjective.from_names("sigmoid", None, LossParams(beta=0.1), wpo=wpo)
    out = objective(policy, BATCH, torch.tensor([-1.5, -2.5, -3.5, -4.5]))
    assert policy.asked == [asked] and out.losses.shape == (2,)
    if wpo == "paper":
        with pytest.raises(ValueError, match="token_distribution"):
            objective(Fake(token_distribution=False), BATCH, None)


def test_the_pair_metrics_of_known_rewards():
    from dpokit.core import LossOutput, PairLogps
    from dpokit.objectives.preference import SATURATED, pair_metrics

    c = torch.tensor([1.0, 2.0 * SATURATED, 0.5])
    r = torch.tensor([0.0, 0.0, 0.5])
    out = PairLogps(torch.tensor([-1.0, -4.0, -2.0]), torch.tensor([-2.0, -1.0, -2.0]),
                    torch.tensor([1, 4, 2]), torch.tensor([2, 1, 4]))
    means = pair_metrics(LossOutput(torch.zeros(3), c, r), out).means()
    assert means["rewards/saturated"] == pytest.approx(1 / 3)  # only the second is past it
    assert means["rewards/accuracies"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert means["rewards/accuracies_strict"] == pytest.approx(2 / 3)
    assert means["rewards/margins"] == pytest.approx((1.0 + 2 * SATURATED) / 3)
    assert means["logps/rejected"] == pytest.approx(-5 / 3)
    assert means["logp_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert means["logp_accuracy_per_token"] == pytest.approx((0 + 0 + 1) / 3)  # -1 < -1/2


def test_the_reference_free_losses_report_beta_times_each_log_prob_and_nll_per_token():
    from dpokit.losses import get_loss

    c, r = torch.tensor([-2.0, -6.0]), torch.tensor([-3.0, -1.0])
    extras = {"chosen_tokens": torch.tensor([1.0, 3.0]), "rejected_tokens": torch.ones(2)}
    out = get_loss("cpo").fn(c, r, None, None, LossParams(beta=0.5, nll_weight=1.0), extras)
    torch.testing.assert_close(out.chosen_rewards, 0.5 * c)
    torch.testing.assert_close(out.rejected_rewards, 0.5 * r)
    nll = torch.tensor([2.0, 2.0])  # -(-2)/1 (a one-token answer), -(-6)/3
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(0.5 * (c - r)) + nll)


def test_the_registry_declares_what_each_loss_is():
    import dataclasses

    from dpokit.losses import get_loss
    from dpokit.losses.registry import _PARAMS

    assert not get_loss("sigmoid").length_normalized and get_loss("ipo_norm").length_normalized
    assert get_loss("simpo").length_normalized and not get_loss("cpo").length_normalized
    assert get_loss("beta_dpo").stochastic and not get_loss("bco_pair").stochastic
    assert PreferenceObjective.from_names("bco_pair", None, LossParams()).pools_batch_stats
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_loss("sigmoid").needs_reference = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        _PARAMS["beta"].default = 1.0


def test_one_value_has_no_spread():
    from dpokit.losses import Statistic
    from dpokit.objectives.statistics import BatchMoments, StatisticTracker

    assert BatchMoments.pooled(torch.tensor([3.0]), None).std.item() == 0.0
    tracker = StatisticTracker(Statistic("g", lambda *a: None, "ema", gamma=0.5))
    extras = tracker.observe(torch.tensor([3.0]), training=True)
    assert extras["g"].item() == 1.5 and extras["g_std"].item() == 0.0
    fresh = StatisticTracker(Statistic("g", lambda *a: None, "ema", gamma=0.5))
    assert fresh.observe(torch.tensor([4.0]), training=False)["g_std"].item() == 0.0


def test_an_unknown_loss_suggests_the_three_nearest_names():
    from dpokit.losses import get_loss

    with pytest.raises(KeyError) as err:
        get_loss("ipo_nor")
    assert "Did you mean 'ipo_norm', 'sigmoid_norm', 'ipo'? Known:" in str(err.value)
    assert get_loss("kto").batch_level  # its KL estimate is a batch mean


def test_kto_reports_the_completions_reward_beside_beta_z0():
    """Desirable row 0, undesirable row 1; KL estimate z0 = 2 (given): the chosen rewards are
    (β r_0, β z0), the rejected (β z0, β r_1)."""
    from dpokit.losses import get_loss

    c, rc = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])  # r = 2, -1
    extras = {"label": torch.tensor([1.0, 0.0]), "kto_kl": torch.tensor(2.0)}
    out = get_loss("kto").fn(c, torch.zeros(2), rc, torch.zeros(2), LossParams(beta=0.5),
                             extras)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([1.0, -0.5]))
    expected = torch.stack([1 - torch.sigmoid(torch.tensor(0.5 * (2 - 2))),
                            1 - torch.sigmoid(torch.tensor(0.5 * (2 + 1)))])
    torch.testing.assert_close(out.losses, expected)
