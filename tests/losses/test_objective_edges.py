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
