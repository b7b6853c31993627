"""AMRS, the recommender application: the simulator's stated model, the world model learning
it, the rollout pair builder and the diversity figures on hand cases, the recipe's checked
keys, and the whole run on a small world (the session policy itself:
tests/policies/recommender/)."""

from __future__ import annotations

import pytest
import torch

from dpokit.apps.amrs.rollouts import (
    coverage,
    intra_list_distance,
    item_entropy,
    rollout_pairs,
)
from dpokit.apps.amrs.run import load_recommender_recipe, run_recommender, session_context
from dpokit.apps.amrs.simulator import Simulator, log_sessions, utility
from dpokit.apps.amrs.world_model import WorldModel
from dpokit.config import ConfigError
from dpokit.policies.recommender import Context


def test_simulator_follows_its_stated_model():
    sim = Simulator.make(num_items=30, num_users=5, seed=0)
    a = log_sessions(sim, [0, 1], 3, 6, seed=1)
    b = log_sessions(Simulator.make(num_items=30, num_users=5, seed=0), [0, 1], 3, 6, seed=1)
    assert [x.signals for x in a] == [x.signals for x in b]  # seeded
    for s in a:
        assert len(set(s.items)) == len(s.items)  # the logging policy does not repeat
        for listened, rating, _, _ in s.signals:
            assert listened in (0.0, 1.0) and (rating == 0) == (listened == 0)
            assert rating in (0, 0.2, 0.4, 0.6, 0.8, 1.0)
    fresh = sim.respond(0, 0, 3, (0.5, 0.5), history=[])
    repeat = sim.respond(0, 0, 3, (0.5, 0.5), history=[3])
    assert 0 < repeat.listen_prob < fresh.listen_prob < 1
    same_genre = [i for i in range(30) if sim.genre[i] == sim.genre[3] and i != 3][:3]
    run = sim.respond(0, 0, 3, (0.5, 0.5), history=same_genre)
    assert run.listen_prob < fresh.listen_prob  # listeners tire of one genre
    loud = int(sim.attributes[:, 0].argmax())  # the most energetic item suits energize more
    assert sim.match(0, 0, loud) > sim.match(0, 3, loud)
    up = torch.tensor([1.0, 0.8, 0.0, 0.2])  # listened, rated, aroused
    assert utility(0, up) > utility(0, up * torch.tensor([1, 1, 1, -1.0]))  # energize
    assert utility(3, up) < utility(3, up * torch.tensor([1, 1, 1, -1.0]))  # sleep


def test_world_model_loss_falls():
    sim = Simulator.make(num_items=40, num_users=30, seed=0)
    sessions = log_sessions(sim, range(30), 8, 8, seed=0)
    t = {k: torch.tensor(v) if k != "signals" else torch.tensor(v, dtype=torch.float32)
         for k, v in (("items", [s.items for s in sessions]),
                      ("signals", [s.signals for s in sessions]),
                      ("mode", [s.mode for s in sessions]))}
    start = torch.tensor([s.start for s in sessions], dtype=torch.float32)
    torch.manual_seed(0)
    model = WorldModel(40, dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _ = model.loss(t["items"], t["signals"], t["mode"], start)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    rolled = model.rollout(t["items"][:2, :3], t["signals"][:2, :3], t["mode"][:2], start[:2],
                           t["items"][:2, 3:5])
    assert rolled.shape == (2, 2, 4) and ((rolled[..., 0] >= 0) & (rolled[..., 0] <= 1)).all()


CTX = Context(mode=1, start=(0.5, 0.5), items=(0, 1), signals=((1, .6, 0, 0), (0, 0, 0, 0)))


def test_rollout_pairs_on_hand_cases():
    lists = torch.tensor([[2, 3], [9, 8], [4, 4], [2, 3]])
    by_sum = lambda context, ls: ls.sum(1).float()  # noqa: E731
    best_worst = rollout_pairs([CTX], [lists], by_sum)
    assert [(p.chosen, p.rejected) for p in best_worst] == [((9, 8), (2, 3))]
    assert rollout_pairs([CTX], [lists], by_sum, margin=20) == []  # 17 apart: not > 20
    margin = rollout_pairs([CTX], [lists], by_sum, pairing="margin", margin=3)
    # 17 > 8 > 5 = 5: pairs at least 3 apart, never two identical lists, never a tie
    assert sorted((p.chosen, p.rejected) for p in margin) == sorted(
        [((9, 8), (4, 4)), ((9, 8), (2, 3)), ((9, 8), (2, 3)), ((4, 4), (2, 3)),
         ((4, 4), (2, 3))])
    assert [p.index for p in margin] == list(range(5))
    with pytest.raises(ValueError, match="pairing"):
        rollout_pairs([CTX], [lists], by_sum, pairing="top")


def test_diversity_figures_on_known_lists():
    assert coverage([[0, 1], [1, 2]], 10) == 0.3
    assert item_entropy([[0, 1], [2, 3]], 4) == pytest.approx(1.0)  # uniform over the catalogue
    assert item_entropy([[5, 5], [5, 5]], 10) == 0.0  # one item: collapse
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert intra_list_distance([[0, 1]], features) == pytest.approx(5.0)
    assert intra_list_distance([[0, 1, 2]], features) == pytest.approx((5 + 0 + 5) / 3)
    assert intra_list_distance([[0, 0]], features) == 0.0


def test_recipe_keys_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'num_items'"):
        load_recommender_recipe(None, {"recommender.num_itemz": 5})
    with pytest.raises(ConfigError, match="learning_rat"):
        load_recommender_recipe(None, {"dpo.optim.learning_rat": 5})


@pytest.mark.any_precision  # (the pipeline's shape and directions: in any)
def test_the_pipeline_runs_on_a_small_world(tmp_path):
    recipe = load_recommender_recipe("src/dpokit/recipes/recommender.yaml", {
        "recommender.num_items": 40, "recommender.num_users": 40,
        "recommender.heldout_users": 10, "recommender.sessions_per_user": 4,
        "recommender.world_epochs": 2, "recommender.pair_contexts": 40,
        "recommender.eval_contexts": 10, "recommender.dim": 16, "bc.optim.num_epochs": 1,
        "dpo.optim.num_epochs": 1, "recommender.new_items": 5})
    recipe.output_dir = tmp_path
    result = run_recommender(recipe, log=lambda _: None)
    assert set(result.arms) == {"logging policy", "behaviour cloning", "DPO",
                                "greedy (world model)"}
    assert result.pairs > 0 and 0 <= result.ece <= 1
    assert result.world_history[-1]["heldout_loss"] < result.world_history[0]["heldout_loss"]
    assert result.arms["DPO"]["kl_to_reference"] is not None
    assert (tmp_path / "dpo" / "final" / "recommender.pt").is_file()
    assert not set(result.users["held_out"]) & set(result.users["train"])
    assert set(result.stress) == {"mode switch", "one-item history"}
    for test in result.stress.values():
        assert set(test) == set(result.arms)
    assert result.arms["logging policy"]["new_items"] == 0  # it never lists them
    assert set(result.arms["DPO"]["true_signals"]) == {"listened", "rating", "valence shift",
                                                       "arousal shift"}
    first = session_context(log_sessions(Simulator.make(10, 2, 2), [0], 1, 4)[0], 2)
    assert len(first.items) == 2 and len(first.signals) == 2


class _FixedWorld:
    """A world model whose rollout predicts fixed signals per list: list 0 raises arousal
    (+0.5), list 1 lowers it (-0.5); both listened, no rating, no valence change."""

    def rollout(self, context_items, context_signals, mode, start, lists):
        arousal = torch.where(lists[:, :1] == 0, 0.5, -0.5).expand(lists.shape)  # (N, K)
        listened = torch.ones(lists.shape)
        zero = torch.zeros(lists.shape)
        return torch.stack([listened, zero, zero, arousal], -1)  # (N, K, 4)


def test_the_rollout_scorer_weighs_the_sessions_own_mode_by_hand():
    """energize weighs arousal +2, sleep -3 (listened 1 and 0.5): the arousing list scores
    1 + 2·0.5 = 2.0 vs 1 - 2·0.5 = 0.0 when energizing, 0.5 - 3·0.5 = -1.0 vs 0.5 + 1.5 = 2.0
    for sleep; a scorer with its sign flipped or blind to the mode fails one of them."""
    from dpokit.apps.amrs.rollouts import world_model_scorer
    from dpokit.apps.amrs.simulator import MODES

    score = world_model_scorer(_FixedWorld())
    lists = torch.tensor([[0, 3, 4], [1, 3, 4]])
    for mode, expected in (("energize", [2.0, 0.0]), ("sleep", [-1.0, 2.0])):
        context = Context(MODES.index(mode), (0.0, 0.0), (5,), ((1.0, 0.8, 0.0, 0.0),))
        assert score(context, lists).tolist() == pytest.approx(expected), mode


def test_one_logging_policy_logs_training_and_held_out_users_and_never_lists_new_items():
    """The held-out users' sessions come from the policy that logged the training ones (BC
    is compared with the policy it cloned): with one logger passed, the held-out sessions'
    items follow its scores; a logger of another seed (the earlier bug) has other
    popularities. Unlisted items are never shown."""
    from dpokit.apps.amrs.simulator import LoggingPolicy

    sim = Simulator.make(num_items=30, num_users=6, seed=0)
    logger = LoggingPolicy(sim, seed=0, unlisted=range(25, 30))
    other = LoggingPolicy(sim, seed=1)
    assert not torch.allclose(logger.popularity, other.popularity)
    sessions = log_sessions(sim, [0, 1, 2], 20, 6, seed=1, logger=logger)
    shown = {i for x in sessions for i in x.items}
    assert not shown & set(range(25, 30))
    # sessions drawn by the passed logger: its favourite items are shown more than by chance
    top = logger.scores(0, 0).topk(5).indices.tolist()
    counts = sum(i in top for x in sessions if x.user == 0 and x.mode == 0 for i in x.items)
    assert counts > 0
    exclude = logger.session(0, 0, 20, exclude=top)
    assert not set(exclude) & set(top) and not set(exclude) & set(range(25, 30))


def test_stress_tests_change_the_contexts_as_stated():
    from dpokit.apps.amrs.run import STRESS_TESTS

    c = Context(0, (0.5, 0.5), (1, 2, 3), ((1.0, 0.8, 0.0, 0.1),) * 3, user=4)
    switched = STRESS_TESTS["mode switch"](c)
    assert switched.mode == 2 and switched.items == c.items  # energize -> calm
    assert STRESS_TESTS["mode switch"](Context(3, c.start, c.items, c.signals)).mode == 1
    short = STRESS_TESTS["one-item history"](c)
    assert short.items == (1,) and short.signals == c.signals[:1] and short.mode == 0


def test_per_signal_report_and_new_item_share_by_hand():
    """A world model predicting fixed signals and a simulator whose every response is known
    (listen probability 1, no rating noise): the report's per-signal means are those signals'
    means, and the share of new items is counted per recommended item."""
    from dpokit.apps.amrs.rollouts import evaluate_lists
    from dpokit.apps.amrs.simulator import MODES

    sim = Simulator.make(num_items=6, num_users=1, seed=0)
    sim.sharpness, sim.noise = 200.0, 0.0
    sim.taste[:] = 1.0
    sim.attributes[:] = torch.tensor([0.85, 0.5, 0.8])  # every item suits energize fully
    sim.genre[:] = torch.arange(6)  # no genre runs
    context = Context(0, (0.5, 0.5), (0,), ((1.0, 1.0, 0.0, 0.0),), user=0)
    lists = torch.tensor([[1, 2], [3, 5]])
    report = evaluate_lists([context, context], lists, _FixedWorld(), sim, MODES,
                            new_items=[5])
    assert report.world_signals == pytest.approx(
        {"listened": 1.0, "rating": 0.0, "valence shift": 0.0, "arousal shift": -0.5})
    assert report.true_signals["listened"] == 1.0
    assert report.new_items == pytest.approx(1 / 4)
