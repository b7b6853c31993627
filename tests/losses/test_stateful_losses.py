"""The stateful losses through the loop: BCO's running δ and β-DPO's moving M0 and σ change
with training micro-batches only (an evaluation, through the trainer's or the objective's eval
path, reads them and leaves them as they were); and no gradient flows through a statistic:
β-DPO's batch β and BCO's δ are constants to the backward pass (issue 44)."""

from __future__ import annotations

import pytest
import torch
from conftest import held_out_rows
from helpers import tiny_trainer
from torch.nn.functional import logsigmoid

from dpokit.core import PairLogps
from dpokit.losses import LossParams, get_loss
from dpokit.objectives import PreferenceObjective


def snapshot(objective) -> dict:
    return {k: {n: v.clone() for n, v in t.state_dict().items()}
            for k, t in objective.trackers.items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


@pytest.mark.parametrize("loss, key, per_batch", [("bco_pair", "bco_delta", 8),
                                                  ("beta_dpo", "beta_dpo_gap", 1)])
def test_the_trainer_evaluates_with_the_statistics_frozen(tmp_path, tokenizer, loss, key,
                                                          per_batch):
    """Two steps with an evaluation after each: the state counts the training micro-batches
    only (BCO: 2 x 4 rewards a batch; β-DPO: one update a batch); an evaluation leaves the
    state bit for bit, and the objective back in training mode."""
    trainer = tiny_trainer(tmp_path, tokenizer, eval_rows=held_out_rows(), loss=loss,
                           max_steps=2, eval_every=1, batch_size=4, beta_dpo_rho=0.0)
    seen = []
    real = trainer.objective.trackers[key].observe

    def observe(values, training, reduce_sum=None):
        seen.append((training, trainer.objective.training))
        return real(values, training, reduce_sum)

    trainer.objective.trackers[key].observe = observe
    trainer.train()
    tracker = trainer.objective.trackers[key]
    assert tracker.count.item() == 2 * per_batch  # evaluations added nothing
    assert (True, True) in seen and (False, False) in seen  # both paths were taken
    assert all(training == mode for training, mode in seen)
    before = snapshot(trainer.objective)
    metrics = trainer.evaluate()
    assert metrics["eval/loss"] > 0 and f"eval/stat/{key}" in metrics
    assert_same_state(before, snapshot(trainer.objective))
    assert trainer.objective.training is True
    # the evaluation read the frozen statistic: its logged value is the state's
    assert metrics[f"eval/stat/{key}"] == pytest.approx(tracker.mean.item(), rel=1e-6)


@pytest.mark.parametrize("loss", ["bco_pair", "beta_dpo"])
def test_the_objective_in_eval_mode_reads_the_state_and_leaves_it(loss):
    objective = PreferenceObjective.from_names(loss, None, LossParams(beta=0.1,
                                                                      beta_dpo_rho=0.0))
    torch.manual_seed(0)
    train_pairs = [(PairLogps(*torch.randn(2, 4), torch.full((4,), 3), torch.full((4,), 3)),
                    *torch.randn(2, 4)) for _ in range(2)]
    for pairs in train_pairs:
        objective.losses(*pairs, {})
    state = snapshot(objective)
    objective.train(False)
    far = PairLogps(torch.full((4,), 2.0), torch.full((4,), -1.0), torch.full((4,), 3),
                    torch.full((4,), 3))
    frozen = objective.losses(far, torch.zeros(4), torch.zeros(4), {}).losses
    assert_same_state(state, snapshot(objective))
    objective.train(True)
    moved = objective.losses(far, torch.zeros(4), torch.zeros(4), {}).losses
    assert not torch.allclose(frozen, moved)  # in training the same batch moves the statistic


def grad_of(fn, chosen, *rest):
    chosen = chosen.clone().requires_grad_(True)
    fn(chosen, *rest).losses.sum().backward()
    return chosen.grad


H = torch.tensor([0.3, -0.2, 1.1, 0.4, -0.9], dtype=torch.float32)
ZEROS = torch.zeros(5)


@pytest.mark.parametrize("extras", [None, {"beta_dpo_gap": torch.tensor(0.2),
                                           "beta_dpo_gap_std": torch.tensor(0.5)}])
def test_beta_dpo_lets_no_gradient_through_its_batch_beta(extras):
    """With ρ = 0 the loss is -log σ(β_b h), β_b = β(1 + a(mean h - M0)) a constant: the
    gradient is -β_b σ(-β_b h) per pair, with no term through mean h (or M0, σ)."""
    params = LossParams(beta=0.5, beta_dpo_a=2.0, beta_dpo_rho=0.0)
    fn = get_loss("beta_dpo").fn
    got = grad_of(lambda c, *r: fn(c, *r, params, extras), H, ZEROS, ZEROS, ZEROS)
    m0 = H.mean() if extras is None else extras["beta_dpo_gap"]
    beta = 0.5 * (1 + 2.0 * (H.mean() - m0))
    torch.testing.assert_close(got, -beta * torch.sigmoid(-beta * H), rtol=1e-6, atol=1e-7)
    # a gradient through β_b would add (β a / n) Σ_j -σ(-β_b h_j) h_j to every pair
    leak = 0.5 * 2.0 / 5 * (-torch.sigmoid(-beta * H) * H).sum()
    assert leak.abs() > 1e-2


def test_beta_dpo_through_the_objective_lets_no_gradient_through_m0_or_sigma():
    objective = PreferenceObjective.from_names("beta_dpo", None, LossParams(
        beta=0.5, beta_dpo_a=2.0, beta_dpo_rho=0.0))
    tokens = torch.full((5,), 3)
    chosen = H.clone().requires_grad_(True)
    objective.losses(PairLogps(chosen, ZEROS, tokens, tokens), ZEROS, ZEROS, {}).losses.sum(
    ).backward()
    tracker = objective.trackers["beta_dpo_gap"]
    m0 = tracker.mean.float()  # 0.1 of the batch mean, updated before use
    assert m0.item() == pytest.approx(0.1 * H.mean().item(), rel=1e-5)
    beta = 0.5 * (1 + 2.0 * (H.mean() - m0))
    torch.testing.assert_close(chosen.grad, -beta * torch.sigmoid(-beta * H), rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("through_objective", [False, True])
def test_bco_lets_no_gradient_through_delta(through_objective):
    """-log σ(r_w - δ) - log σ(-(r_l - δ)) with δ a constant: d/d chosen = -β σ(-(r_w - δ))."""
    beta = 0.5
    rejected = torch.tensor([0.1, 0.7, -0.4, 0.2, 0.0])
    tokens = torch.full((5,), 3)
    chosen = H.clone().requires_grad_(True)
    if through_objective:
        objective = PreferenceObjective.from_names("bco_pair", None, LossParams(beta=beta))
        out = objective.losses(PairLogps(chosen, rejected, tokens, tokens), ZEROS, ZEROS, {})
    else:
        out = get_loss("bco_pair").fn(chosen, rejected, ZEROS, ZEROS, LossParams(beta=beta))
    out.losses.sum().backward()
    delta = beta * torch.cat([H, rejected]).mean()
    torch.testing.assert_close(chosen.grad, -beta * torch.sigmoid(-(beta * H - delta)),
                               rtol=1e-6, atol=1e-7)
    by_hand = -logsigmoid(beta * H - delta) - logsigmoid(-(beta * rejected - delta))
    torch.testing.assert_close(out.losses.detach(), by_hand, rtol=1e-6, atol=1e-7)
