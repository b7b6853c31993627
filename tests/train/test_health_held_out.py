"""The reward checks read the held-out series where the run has them (a baseline at step 0 and
a last evaluation suffice) and say which series fired: the quickstart's own held-out figures
(chosen reward -1.99 against a margin of +1.41) are likelihood displacement, which the
training series alone never showed."""

from __future__ import annotations

import pytest

from dpokit.train.health import (
    HELD_OUT,
    TRAINING,
    RunTrace,
    likelihood_displacement,
    reference_mismatch,
    reward_scale,
)

CALM_TRAINING = [{"step": s, "rewards/chosen": 0.1 * s, "rewards/margins": 0.2 * s,
                  "rewards/rejected": -0.1 * s, "rewards/saturated": 0.0, "loss": 0.6}
                 for s in range(1, 11)]


def held(*points: dict) -> list[dict]:
    return [{"step": s, **{f"eval/{k}": v for k, v in p.items()}}
            for s, p in zip((0, 60, 120), points, strict=False)]


def test_quickstart_held_out_displacement_fires_on_the_held_out_series():
    start = {"rewards/chosen": 0.0, "rewards/margins": 0.0, "rewards/rejected": 0.0}
    end = {"rewards/chosen": -1.99, "rewards/margins": 1.41, "rewards/rejected": -3.40}
    trace = RunTrace(CALM_TRAINING, held(start, end), loss="sigmoid")
    finding = likelihood_displacement(trace)
    assert finding is not None and finding.series == HELD_OUT and finding.step == 60
    assert finding.panel == "held out: implicit-reward margin"
    assert "on held-out pairs" in finding.finding and "-1.990" in finding.finding
    assert likelihood_displacement(RunTrace(CALM_TRAINING, [], loss="sigmoid")) is None
    # each side of the rule: the chosen falls by less than the margin, or the margin shrinks
    for chosen, margin_end, margin_start in ((-1.40, 1.41, 0.0), (-1.99, 1.41, 1.5)):
        near = held({"rewards/chosen": 0.0, "rewards/margins": margin_start},
                    {"rewards/chosen": chosen, "rewards/margins": margin_end})
        assert likelihood_displacement(RunTrace(CALM_TRAINING, near)) is None


def test_training_displacement_is_named_as_training_when_no_evaluation_shows_it():
    rows = [{"step": s, "rewards/chosen": -0.5 * s, "rewards/margins": 0.1 * s}
            for s in range(1, 11)]
    finding = likelihood_displacement(RunTrace(rows, []))
    assert finding.series == TRAINING and finding.panel == "training: implicit-reward margin"
    assert finding.finding.startswith("on training batches")


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_held_out_reward_scale_fires_on_saturation_and_on_size(sign):
    saturated = held({"rewards/saturated": 0.0}, {"rewards/saturated": 0.6})
    finding = reward_scale(RunTrace(CALM_TRAINING, saturated))
    assert finding.series == HELD_OUT and "60% of the pairs" in finding.finding
    assert reward_scale(RunTrace(CALM_TRAINING, held({"rewards/saturated": 0.0},
                                                     {"rewards/saturated": 0.5}))) is None
    big = held({"rewards/chosen": 0.0, "rewards/rejected": 0.0},
               {"rewards/chosen": sign * 21.0, "rewards/rejected": 0.0})
    finding = reward_scale(RunTrace(CALM_TRAINING, big))
    assert finding.series == HELD_OUT and f"{sign * 21:+.1f}" in finding.finding
    small = held({"rewards/chosen": 0.0, "rewards/rejected": 0.0},
                 {"rewards/chosen": sign * 19.0, "rewards/rejected": 0.0})
    assert reward_scale(RunTrace(CALM_TRAINING, small)) is None


def test_the_baseline_evaluation_shows_a_reference_that_is_not_the_starting_policy():
    off = held({"rewards/chosen": 0.3, "rewards/rejected": -0.1, "loss": 0.55})
    finding = reference_mismatch(RunTrace([{"step": 1}], off,
                                          loss="sigmoid"))
    assert finding.series == HELD_OUT and finding.step == 0
    assert "at the baseline evaluation" in finding.finding and "0.5500" in finding.finding
    on = held({"rewards/chosen": 0.0, "rewards/rejected": 0.0, "loss": 0.6931})
    assert reference_mismatch(RunTrace([{"step": 1}], on, loss="sigmoid")) is None
    later = [{"step": 20, "eval/rewards/chosen": 0.3, "eval/rewards/rejected": 0.0}]
    assert reference_mismatch(RunTrace([{"step": 1}], later, loss="sigmoid")) is None


def test_a_resumed_runs_live_checks_read_its_earlier_rows_and_do_not_warn_twice():
    """After a resume the monitor holds the earlier session's rows (the step-0 baseline
    among them): a held-out course spans the whole run, and what fired before is not
    warned again."""
    from dpokit.train.health import HealthMonitor

    said = []
    monitor = HealthMonitor(said.append, "sigmoid")
    start = {"rewards/chosen": 0.0, "rewards/margins": 0.0, "rewards/rejected": 0.0}
    monitor.preload([*CALM_TRAINING[:5], *held(start)])
    end = {"rewards/chosen": -1.99, "rewards/margins": 1.41, "rewards/rejected": -3.4}
    fired = monitor.observe({"step": 60, **{f"eval/{k}": v for k, v in end.items()}})
    assert [f.check for f in fired] == ["likelihood_displacement"] and len(said) == 1
    again = HealthMonitor(said.append, "sigmoid")
    again.preload([*CALM_TRAINING[:5], *held(start), {"step": 60, **{
        f"eval/{k}": v for k, v in end.items()}}])
    assert again.observe({"step": 61, "loss": 0.5}) == [] and len(said) == 1
