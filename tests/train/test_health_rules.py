"""The health checks' rules on hand-built traces, each in both directions: a trace where the
check must fire beside one, a hair away, where it must not, for each sign of the figures it
reads, and at the edges of its magnitude rule (issue 44: a flipped sign, a missing ``abs`` or
a threshold moved must fail here)."""

from __future__ import annotations

import math

import pytest

from dpokit.train.health import (
    RunTrace,
    frozen,
    length_drift,
    likelihood_displacement,
    overfitting,
    reference_mismatch,
    reward_hacking,
    reward_scale,
    run_checks,
    style_geometry,
)


def train_rows(**series: list[float]) -> list[dict]:
    """Training rows, step 1..n, one keyword per figure: its values in step order (a shorter
    list: the later rows lack the figure)."""
    n = max(len(v) for v in series.values())
    return [{"step": s + 1, **{k.replace("__", "/"): v[s] for k, v in series.items()
                               if s < len(v)}} for s in range(n)]


def eval_rows(steps: list[int], **series: list[float]) -> list[dict]:
    return [{"step": s, **{"eval/" + k.replace("__", "/"): v[i] for k, v in series.items()}}
            for i, s in enumerate(steps)]


# --- reward hacking: the KL climbs fast while the samples' reward stalls -----------------------


def hacking(kl: list[float], reward: list[float]) -> RunTrace:
    steps = [10 * i for i in range(len(kl))]
    return RunTrace([{"step": 1, "loss": 0.6}], eval_rows(steps, gen__kl=kl, gen__reward=reward))


@pytest.mark.parametrize("kl, reward, fires", [
    ([0.05, 0.6, 1.8], [0.1, 0.1, 0.1], True),  # KL up, reward flat
    ([0.05, 0.6, 1.8], [0.1, 0.1, 0.05], True),  # KL up, reward down
    ([0.05, 0.6, 1.8], [0.1, 0.3, 0.6], False),  # KL up, reward up: paid for
    ([1.8, 0.9, 0.6], [0.1, 0.1, 0.1], False),  # KL down: the direction matters
    ([0.6, 0.6, 0.6], [0.1, 0.1, 0.1], False),  # KL high but not climbing
    # a negative reward: the tolerance is 5% of its size (abs), +0.01
    ([0.05, 1.8], [-2.0, -1.95], True),  # gained 0.05 < 0.05 * 2 + 0.01
    ([0.05, 1.8], [-2.0, -1.85], False),  # gained 0.15 > 0.11
    ([0.05, 1.8], [2.0, 2.05], True),  # the same tolerance for a positive reward
    ([0.05, 1.8], [2.0, 2.15], False),
    ([0.05, 1.8], [0.0, 0.005], True),  # the +0.01 floor
    ([0.05, 1.8], [0.0, 0.02], False),
    # the magnitude rule: the last KL past 0.5 nats ...
    ([0.01, 0.49], [0.1, 0.1], False),
    ([0.01, 0.51], [0.1, 0.1], True),
    # ... and past twice the first (the first floored at 0.05)
    ([0.3, 0.55], [0.1, 0.1], False),
    ([0.3, 0.65], [0.1, 0.1], True),
    ([-0.2, 0.51], [0.1, 0.1], True),  # a negative KL estimate at first: the floor
    ([0.05], [0.1], False),  # one evaluation: nothing to compare
])
def test_reward_hacking_fires_only_on_a_climbing_kl_with_a_stalled_reward(kl, reward, fires):
    finding = reward_hacking(hacking(kl, reward))
    assert (finding is not None) is fires
    if fires:
        assert finding.check == "reward_hacking" and finding.step == 10 * (len(kl) - 1)
        assert f"rose by {kl[-1] - kl[0]:.3f} nats to {kl[-1]:.3f}" in finding.finding
        assert f"changed by {reward[-1] - reward[0]:+.4f}" in finding.finding


def test_reward_hacking_reads_the_first_and_last_evaluation_not_the_neighbours():
    # the middle evaluations would say "climbing, stalled"; the ends say the reward paid
    assert reward_hacking(hacking([0.05, 0.05, 1.8, 1.8], [0.1, 0.5, 0.5, 0.5])) is None
    assert reward_hacking(hacking([0.05, 1.0, 1.8, 1.8], [0.5, 0.1, 0.1, 0.5])) is not None
    # the samples of the last evaluation that has them are quoted
    t = hacking([0.05, 0.6, 1.8], [0.1, 0.1, 0.1])
    t.evals[1]["eval/gen/samples"] = [{"sample": "old old"}]
    t.evals[2]["eval/gen/samples"] = [{"sample": "new new"}, {"sample": "two"}, {"sample": "x3"}]
    text = reward_hacking(t).finding
    assert "'new new'; 'two'" in text and "x3" not in text and "old" not in text
    assert "Samples at step 20" in text


# --- reward scale: saturated pairs, or implicit rewards far from 0 ----------------------------


def scale(n: int = 10, saturated=None, chosen=None, rejected=None) -> RunTrace:
    series = {}
    if saturated is not None:
        series["rewards__saturated"] = saturated
    if chosen is not None:
        series["rewards__chosen"] = chosen
    if rejected is not None:
        series["rewards__rejected"] = rejected
    return RunTrace(train_rows(**series))


@pytest.mark.parametrize("saturated, fires", [
    ([0.0] * 8 + [0.8, 0.8], True),  # the last fifth saturated
    ([0.8, 0.8] + [0.0] * 8, False),  # the first fifth: saturated early, recovered
    ([0.0] * 8 + [0.5, 0.5], False),  # exactly half: not most
    ([0.0] * 8 + [0.51, 0.51], True),
    ([0.0] * 9 + [1.0], False),  # the mean of the last fifth (2 of 10 rows) is 0.5
    ([0.9, 0.9], False),  # fewer than three rows: no ends
])
def test_reward_scale_fires_when_most_pairs_end_saturated(saturated, fires):
    finding = reward_scale(scale(saturated=saturated))
    assert (finding is not None) is fires
    if fires:
        assert finding.step == len(saturated) and "sigmoid loss gives no gradient" in \
            finding.finding and f"{saturated[-1]:.0%} of the pairs" in finding.finding


@pytest.mark.parametrize("chosen, rejected, fires", [
    (25.0, -1.0, True),  # the chosen far above 0
    (-25.0, -1.0, True),  # far below 0: the size, either sign
    (1.0, -25.0, True),  # the rejected far below 0
    (1.0, 25.0, True),  # or far above
    (19.5, -19.5, False),  # both within 20
    (20.0, -20.0, False),  # exactly 20: not past
    (20.5, 0.0, True),
    (0.0, -20.5, True),
])
def test_reward_scale_fires_when_an_implicit_reward_is_past_20_either_sign(chosen, rejected,
                                                                           fires):
    t = scale(chosen=[0.0, 0.5, chosen], rejected=[0.0, -0.5, rejected])
    finding = reward_scale(t)
    assert (finding is not None) is fires
    if fires:
        assert finding.step == 3 and f"reached {chosen:+.1f} (chosen) and {rejected:+.1f} " \
            "(rejected)" in finding.finding and "larger beta" in finding.remedy


def test_reward_scale_reads_the_last_rewards_not_the_first():
    assert reward_scale(scale(chosen=[30.0, 5.0, 1.0], rejected=[-30.0, -5.0, -1.0])) is None
    assert reward_scale(scale(chosen=[1.0, 5.0, 30.0], rejected=[-1.0, -5.0, -1.0])) is not None
    # the magnitude reads the chosen and the rejected, each: a rejected reward alone is enough
    assert reward_scale(scale(chosen=[0.0, 0.0, 0.0], rejected=[0.0, 0.0, -21.0])) is not None
    # saturation is checked first and named; without it the magnitude still fires
    both = scale(saturated=[0.9] * 5, chosen=[0.0] * 4 + [30.0], rejected=[0.0] * 5)
    assert "of the pairs have a reward margin" in reward_scale(both).finding
    assert reward_scale(scale(chosen=[30.0], rejected=[0.0])) is not None  # one row is enough


def test_every_rule_returns_nothing_on_an_empty_trace():
    empty = RunTrace()
    for check in (reward_hacking, reward_scale, likelihood_displacement, length_drift,
                  overfitting, reference_mismatch, frozen, style_geometry):
        assert check(empty) is None
    assert run_checks(empty) == []


# --- the other checks' directions -----------------------------------------------------------


@pytest.mark.parametrize("chosen_end, margin_end, fires", [
    (-0.6, 0.5, True),  # the chosen fell further than the margin grew
    (-0.4, 0.5, False),  # fell by less than the margin bought: DPO's usual course
    (0.6, 0.5, False),  # the chosen rose
    (-0.6, -0.1, True),  # a margin that fell below 0: the chosen's fall against 0
])
def test_likelihood_displacement_compares_the_chosen_fall_with_the_margin(chosen_end, margin_end,
                                                                          fires):
    n = 10
    chosen = [chosen_end * s / (n - 1) for s in range(n)]
    margin = [-0.2 + (margin_end + 0.2) * s / (n - 1) for s in range(n)]  # grows from -0.2
    t = RunTrace(train_rows(rewards__chosen=chosen, rewards__margins=margin))
    assert (likelihood_displacement(t) is not None) is fires
    # a margin that shrinks is not displacement, however far the chosen fell
    t = RunTrace(train_rows(rewards__chosen=chosen, rewards__margins=margin[::-1]))
    assert likelihood_displacement(t) is None


@pytest.mark.parametrize("lengths, fires", [
    ([20.0, 25.0, 27.0], True),  # +35%
    ([20.0, 25.0, 25.8], False),  # +29%
    ([20.0, 27.0, 20.0], True),  # a peak is enough
    ([27.0, 20.0, 21.0], False),  # shorter than at first
    ([0.0, 10.0, 20.0], False),  # no first length to compare with
])
def test_length_drift_is_growth_past_30_percent(lengths, fires):
    t = RunTrace([], eval_rows([0, 5, 10], gen__length_tokens=lengths))
    assert (length_drift(t) is not None) is fires


@pytest.mark.parametrize("accuracy, held, fires", [
    (0.97, [0.5, 0.4, 0.45], True),  # rose 0.05 from its best
    (0.97, [0.5, 0.4, 0.41], False),  # rose less than max(0.02, 10%)
    (0.90, [0.5, 0.4, 0.6], False),  # training accuracy not near 1
    (0.97, [0.6, 0.5, 0.4], False),  # still falling
    (0.97, [-0.5, -0.4, -0.3], True),  # a negative loss: 10% of its size
    (0.97, [-5.0, -5.2, -4.75], False),  # rose 0.45 < 10% of 5.2
    (0.97, [-5.0, -5.2, -4.6], True),
])
def test_overfitting_is_a_held_out_loss_risen_from_its_best(accuracy, held, fires):
    t = RunTrace(train_rows(rewards__accuracies=[accuracy] * 5),
                 eval_rows([2, 4, 6], loss=held), checkpoints=[1, 5])
    finding = overfitting(t)
    assert (finding is not None) is fires
    if fires:
        best = min(range(3), key=lambda i: held[i])
        assert finding.step == [2, 4, 6][best]
        assert f"nearest to it is step {min([1, 5], key=lambda s: abs(s - 2 * best - 2))}" in \
            finding.finding


@pytest.mark.parametrize("chosen, rejected, fires", [
    (0.0, 0.0, False), (0.04, -0.04, False), (0.06, 0.0, True), (-0.06, 0.0, True),
    (0.0, 0.06, True), (0.0, -0.06, True)])
def test_reference_mismatch_is_a_first_reward_away_from_zero_either_sign(chosen, rejected, fires):
    t = RunTrace([{"step": 1, "rewards/chosen": chosen, "rewards/rejected": rejected,
                   "loss": 0.5}, {"step": 2, "rewards/chosen": 9.0, "rewards/rejected": 9.0}],
                 loss="sigmoid")
    finding = reference_mismatch(t)
    assert (finding is not None) is fires
    if fires:
        assert finding.severity == "error" and finding.step == 1 and "not ln 2" in \
            finding.finding
    t.loss = "orpo"  # reference-free: its rewards need not be 0 at the start
    assert reference_mismatch(t) is None
    t.loss = None
    assert reference_mismatch(t) is None


def test_frozen_needs_every_step_frozen():
    base = dict(loss=[0.7 - 0.01 * s for s in range(5)], learning_rate=[1e-4] * 5,
                grad_norm=[1.0] * 5)
    assert frozen(RunTrace(train_rows(**base))) is None
    assert frozen(RunTrace(train_rows(**{**base, "learning_rate": [0.0] * 5}))).step == 5
    assert frozen(RunTrace(train_rows(**{**base, "learning_rate": [0.0] * 4 + [1e-6]}))) is None
    assert frozen(RunTrace(train_rows(**{**base, "learning_rate": [0.0] * 2}))) is None
    assert "below 1e-10" in frozen(RunTrace(train_rows(**{**base,
                                                          "grad_norm": [1e-11] * 3}))).finding
    assert frozen(RunTrace(train_rows(**{**base, "grad_norm": [1e-11] * 4 + [1e-9]}))) is None
    assert frozen(RunTrace(train_rows(**{**base, "grad_norm": [1e-11] * 2}))) is None
    assert "stayed at 0.693147 over 5" in frozen(RunTrace(train_rows(
        **{**base, "loss": [math.log(2)] * 5}))).finding
    assert frozen(RunTrace(train_rows(**{**base, "loss": [0.7] * 4 + [0.7 + 1e-8]}))) is None
    assert frozen(RunTrace(train_rows(**{**base, "loss": [0.7] * 4}))) is None


@pytest.mark.parametrize("change, limit, fires", [
    (0.25, 0.2, True), (0.15, 0.2, False), (0.25, 0.3, False), (-0.5, 0.2, False)])
def test_style_geometry_is_a_rise_past_warn_increase(change, limit, fires):
    t = RunTrace([], eval_rows([0, 5], geometry__style_tdi_change=[0.0, change]),
                 warn_increase=limit)
    assert (style_geometry(t) is not None) is fires


# --- the edges the mutator found unpinned (tools/mutate.py on health.py) ---------------------


def test_each_rule_is_strict_at_its_exact_threshold():
    """Each threshold exactly (numbers exact in binary): not past it, no finding."""
    assert reward_hacking(hacking([0.05, 0.5], [0.1, 0.1])) is None  # KL exactly 0.5
    assert reward_hacking(hacking([0.375, 0.75], [0.1, 0.1])) is None  # exactly twice the first
    assert reward_hacking(hacking([0.05, 1.0], [0.0, 0.01])) is None  # gained exactly 0.01
    assert reward_hacking(hacking([0.05, 1.0], [0.0, 0.0078125])) is not None
    assert reward_hacking(hacking([0.04, 0.125], [0.0, 0.0])) is None  # 0.125 < 0.5
    t = RunTrace([], eval_rows([0, 5, 10], gen__length_tokens=[20.0, 25.0, 1.3 * 20.0]))
    assert length_drift(t) is None  # exactly +30%
    t = RunTrace(train_rows(rewards__accuracies=[0.95] * 5),
                 eval_rows([2, 4, 6], loss=[-4.0, -5.0, -4.5]))
    assert overfitting(t) is None  # rose exactly 10% of 5
    t.train = train_rows(rewards__accuracies=[0.97] * 5)
    t.evals[-1]["eval/loss"] = -4.25
    assert overfitting(t) is not None
    t.train = train_rows(rewards__accuracies=[0.95] * 5)
    assert overfitting(t) is not None  # accuracy exactly 0.95 is near 1
    t = RunTrace([{"step": 1, "rewards/chosen": 0.05, "rewards/rejected": 0.0}], loss="sigmoid")
    assert reference_mismatch(t) is None  # exactly 0.05
    base = dict(loss=[0.7 - 0.01 * s for s in range(5)], learning_rate=[1e-4] * 5)
    assert frozen(RunTrace(train_rows(**base, grad_norm=[1e-10] * 3))) is None
    assert frozen(RunTrace(train_rows(loss=[0.0, 2**-30, 0.0, 0.0, 0.0]))) is not None
    assert frozen(RunTrace(train_rows(loss=[0.0, 1e-9, 0.0, 0.0, 0.0]))) is None
    t = RunTrace([], eval_rows([0, 5], geometry__style_tdi_change=[0.0, 0.25]),
                 warn_increase=0.25)
    assert style_geometry(t) is None


def test_each_rule_needs_only_its_fewest_points():
    """The fewest points each rule reads: exactly that many fire, one fewer does not."""
    assert reward_scale(scale(saturated=[0.9, 0.9, 0.9])) is not None  # three rows: the ends
    assert reward_scale(scale(saturated=[0.0, 0.9, 0.9])) is not None  # 1 of 3 is the end
    assert reward_scale(scale(saturated=[0.9, 0.0, 0.0, 0.6])) is not None  # the last of 4
    lr = dict(learning_rate=[0.0] * 3)
    assert frozen(RunTrace(train_rows(**lr))).step == 3
    assert frozen(RunTrace(train_rows(grad_norm=[0.0] * 3))).step == 3
    assert frozen(RunTrace(train_rows(loss=[0.5] * 5))).step == 5
    assert frozen(RunTrace(train_rows(loss=[0.5] * 4))) is None
    assert length_drift(RunTrace([], eval_rows([0, 5], gen__length_tokens=[20.0, 30.0])))
    assert length_drift(RunTrace([], eval_rows([0], gen__length_tokens=[20.0]))) is None
    accurate = train_rows(rewards__accuracies=[0.97] * 5)
    assert overfitting(RunTrace(accurate, eval_rows([2, 4, 6, 8],
                                                    loss=[0.5, 0.4, 0.41, 0.5]))).step == 4
    assert overfitting(RunTrace(accurate, eval_rows([2, 4], loss=[0.4, 0.9]))) is None
    assert overfitting(RunTrace(accurate, eval_rows([2, 4, 6], loss=[0.5, 0.4, 0.5]))).finding
    displaced = RunTrace(train_rows(rewards__chosen=[0.0, -0.3, -0.6],
                                    rewards__margins=[0.0, 0.2, 0.5]))
    assert likelihood_displacement(displaced).step == 3
    assert likelihood_displacement(RunTrace(train_rows(rewards__chosen=[0.0, -0.6],
                                                       rewards__margins=[0.0, 0.5]))) is None


def test_a_missing_figure_skips_the_rule():
    assert likelihood_displacement(RunTrace(train_rows(rewards__margins=[0.0, 0.2, 0.5]))) \
        is None
    assert likelihood_displacement(RunTrace(train_rows(rewards__chosen=[0.0, -0.3, -0.6]))) \
        is None
    assert reward_hacking(RunTrace([], eval_rows([0, 5], gen__kl=[0.05, 1.8]))) is None
    assert reward_hacking(RunTrace([], eval_rows([0, 5], gen__reward=[0.1, 0.1]))) is None
    assert reward_scale(scale(chosen=[30.0] * 3)) is None  # no rejected
    half = RunTrace([{"step": 1, "rewards/chosen": 0.4, "rewards/rejected": None}],
                    loss="sigmoid")
    assert reference_mismatch(half) is None
    assert RunTrace([{"loss": 2}]).series("loss") == [(0, 2.0)]
    assert isinstance(RunTrace([{"loss": 2}]).series("loss")[0][1], float)


def test_the_findings_point_at_the_right_step_and_quote_the_right_values():
    t = RunTrace(train_rows(rewards__chosen=[0.0, -0.3, -0.6, -0.6],
                            rewards__margins=[0.0, 0.2, 0.5, 0.5]))
    t.train[-1]["step"] = 40
    found = likelihood_displacement(t)
    assert found.step == 40 and "fell to -0.600 (from +0.000)" in found.finding
    assert "(+0.000 -> +0.500)" in found.finding
    t = RunTrace(train_rows(grad_norm=[0.0] * 3, loss=[0.5] * 5))
    t.train[2]["step"], t.train[4]["step"] = 30, 50
    assert frozen(t).step == 30
    t = RunTrace(train_rows(loss=[0.5] * 5))
    t.train[-1]["step"] = 50
    assert frozen(t).step == 50
    t = RunTrace([], eval_rows([0, 7], geometry__style_tdi_change=[0.0, 0.5]))
    assert style_geometry(t).step == 7 and "+50.0%" in style_geometry(t).finding
    assert RunTrace().warn_increase == 0.2
    t = RunTrace([], eval_rows([0, 7], geometry__style_tdi_change=[0.0, 0.21]))
    assert style_geometry(t) is not None  # the default limit, 20%
    long = "x" * 200
    t = hacking([0.05, 1.8], [0.1, 0.1])
    t.evals[-1]["eval/gen/samples"] = [{"sample": long}]
    assert repr(long)[:80] + "." in reward_hacking(t).finding
    assert repr(long)[:81] not in reward_hacking(t).finding
    t = RunTrace(train_rows(rewards__accuracies=[0.97] * 5),
                 eval_rows([2, 4, 6], loss=[0.5, 0.4, 0.5]))
    assert "nearest" not in overfitting(t).finding  # no checkpoints kept: none named


def test_reference_mismatch_reads_the_loss_by_its_parts():
    first = {"step": 1, "rewards/chosen": 0.4, "rewards/rejected": 0.0}
    assert reference_mismatch(RunTrace([dict(first)], loss="sigmoid+sft")) is not None
    assert reference_mismatch(RunTrace([dict(first)], loss="sft+sigmoid")) is not None
    assert reference_mismatch(RunTrace([dict(first)], loss="not_a_loss")) is None
    found = reference_mismatch(RunTrace([dict(first)], loss="sigmoid"))  # no loss logged
    assert "not ln 2" not in found.finding
    found = reference_mismatch(RunTrace([dict(first, loss=0.5)], loss="ipo"))
    assert "not ln 2" not in found.finding  # ln 2 is the sigmoid loss's start only
    assert "0.5000, not ln 2" in reference_mismatch(
        RunTrace([dict(first, loss=0.5)], loss="sigmoid")).finding


def test_the_non_finite_finding_says_what_the_replay_found():
    from dpokit.train.health import non_finite

    assert non_finite(RunTrace()) is None
    found = non_finite(RunTrace(nonfinite={"step": 3, "what": "the loss"}))
    assert "not found by the replay" in found.finding and "the batch is in" not in \
        found.finding and found.step == 3
    found = non_finite(RunTrace(nonfinite={"step": 3, "first_nonfinite": "layer 1",
                                           "batch": "b.pt"}))
    assert "first non-finite tensor: layer 1; the batch is in b.pt." in found.finding


def test_which_checks_run_live():
    from dpokit.train.health import CHECKS, LIVE, Finding

    assert LIVE == set(CHECKS) - {"reference_mismatch", "non_finite", "style_geometry"}
    finding = Finding("x", "warning", 1, "f", "r")
    with pytest.raises(AttributeError):
        finding.step = 2  # a finding is a record, frozen


def test_a_run_folder_is_read_into_a_trace(tmp_path):
    import json

    from dpokit.train.health import HealthMonitor, load_trace

    rows = [{"step": 1, "loss": 0.7}, {"step": 2, "eval/loss": 0.6}, {"step": 2, "loss": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "run.json").write_text(json.dumps({
        "objective": "sigmoid", "config": {"geometry": {"warn_increase": 0.35}}}))
    (tmp_path / "nonfinite.json").write_text(json.dumps({"step": 2}))
    for step in ("10", "2", "x"):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    trace, skipped = load_trace(tmp_path)
    assert [r["step"] for r in trace.train] == [1, 2] and len(trace.evals) == 1
    assert trace.loss == "sigmoid" and trace.warn_increase == 0.35
    assert trace.config == {"geometry": {"warn_increase": 0.35}}
    assert trace.nonfinite == {"step": 2} and trace.checkpoints == [2, 10] and skipped == []
    (tmp_path / "run.json").write_text(json.dumps({"objective": "ipo", "config": None}))
    assert load_trace(tmp_path)[0].config == {}
    empty, _ = load_trace(tmp_path / "absent")
    assert empty.train == [] and empty.loss is None and empty.checkpoints == []
    monitor = HealthMonitor(lambda _: None, loss="ipo", warn_increase=0.4)
    assert monitor.trace.loss == "ipo" and monitor.trace.warn_increase == 0.4
    assert HealthMonitor(lambda _: None).trace.warn_increase == 0.2


def test_more_edges_the_mutator_found():
    # the displacement's comparison is strict: a fall exactly the margin is tolerated
    t = RunTrace(train_rows(rewards__chosen=[0.0, -0.25, -0.5], rewards__margins=[0.0, 0.25, 0.5]))
    assert likelihood_displacement(t) is None
    # over-fitting's floor of 0.02 for a small best loss
    accurate = train_rows(rewards__accuracies=[0.97] * 5)
    assert overfitting(RunTrace(accurate, eval_rows([2, 4, 6], loss=[0.15, 0.1, 0.13])))
    # the training accuracy at the end is what counts, not at the start
    rising = train_rows(rewards__accuracies=[0.5] * 4 + [0.99])
    falling = train_rows(rewards__accuracies=[0.99] + [0.5] * 4)
    held = eval_rows([2, 4, 6], loss=[0.5, 0.4, 0.6])
    assert overfitting(RunTrace(rising, held)) is not None
    assert overfitting(RunTrace(falling, held)) is None
    # reward hacking reads the last KL, not the second
    assert reward_hacking(hacking([0.05, 0.3, 1.8], [0.1, 0.1, 0.1])) is not None
    assert reward_hacking(hacking([0.05, 1.8, 0.3], [0.1, 0.1, 0.1])) is None
    assert reward_hacking(hacking([0.05, 1.8, 1.8], [0.1, 0.1, 0.5])) is None  # the last reward


def test_held_out_series_edges():
    """Held-out pairs: two evaluations are a course; the saturation of the last evaluation;
    the baseline evaluation (step 0) alone can show a mismatched reference; the finding
    quotes the first and last held-out values."""
    two = RunTrace([], eval_rows([0, 10], rewards__chosen=[0.1, -0.6],
                                 rewards__margins=[0.1, 0.5]))
    found = likelihood_displacement(two)
    assert found is not None and found.step == 10
    three = RunTrace([], eval_rows([0, 10, 20], rewards__chosen=[0.1, -0.3, -0.6],
                                   rewards__margins=[0.2, 0.3, 0.5]))
    found = likelihood_displacement(three)
    assert found.step == 20 and "fell to -0.600 (from +0.100)" in found.finding
    assert "(+0.200 -> +0.500)" in found.finding
    late = RunTrace([], eval_rows([0, 10, 20], rewards__saturated=[0.0, 0.1, 0.9]))
    assert reward_scale(late).step == 20 and "90% of the pairs" in reward_scale(late).finding
    assert reward_scale(RunTrace([], eval_rows([0, 10, 20],
                                               rewards__saturated=[0.0, 0.9, 0.1]))) is None
    baseline = RunTrace([{"step": 1, "rewards/chosen": 0.0, "rewards/rejected": 0.0}],
                        eval_rows([0], rewards__chosen=[0.4], rewards__rejected=[0.0]),
                        loss="sigmoid")
    found = reference_mismatch(baseline)
    assert found is not None and found.step == 0 and "baseline evaluation" in found.finding


def test_a_flat_margin_is_no_displacement():
    t = RunTrace(train_rows(rewards__chosen=[0.0, -0.5, -1.0], rewards__margins=[0.3, 0.3, 0.3]))
    assert likelihood_displacement(t) is None
    t = RunTrace([], eval_rows([0, 10], rewards__chosen=[0.0, -1.0], rewards__margins=[0.3, 0.3]))
    assert likelihood_displacement(t) is None
