"""The health checks on known answers: for each, a synthetic metrics trace that must trigger it
and a healthy one that must not; the live monitor warns once per check; a tiny healthy run
triggers nothing, and tiny runs built to go wrong (a learning rate of 0, a reference that is
not the starting policy) are named."""

from __future__ import annotations

import math

import pytest
from conftest import held_out_rows
from helpers import tiny_trainer

from dpokit.train.health import CHECKS, HealthMonitor, RunTrace, run_checks


def rows(n=10, **series):
    """n training rows; each keyword is a function of the step (1..n)."""
    return [{"step": s, **{k: f(s) for k, f in series.items()}} for s in range(1, n + 1)]


def evals(steps, **series):
    return [{"step": s, **{f"eval/{k}": f(s) for k, f in series.items()}} for s in steps]


HEALTHY = RunTrace(
    rows(20, loss=lambda s: 0.69 - 0.01 * s, learning_rate=lambda s: 1e-4,
         grad_norm=lambda s: 1.0, **{"logps/chosen": lambda s: -40.0 + 0.1 * s,
                                     "rewards/margins": lambda s: 0.05 * s,
                                     "rewards/chosen": lambda s: 0.02 * s,
                                     "rewards/rejected": lambda s: -0.03 * s,
                                     "rewards/accuracies": lambda s: 0.6 + 0.01 * s,
                                     "rewards/saturated": lambda s: 0.0}),
    evals([0, 10, 20], loss=lambda s: 0.69 - 0.005 * s,
          **{"gen/length_tokens": lambda s: 20.0 + 0.1 * s, "gen/kl": lambda s: 0.01 * s,
             "gen/reward": lambda s: 0.1 + 0.02 * s,
             "geometry/style_tdi_change": lambda s: 0.05}),
    loss="sigmoid", checkpoints=[10, 20])
HEALTHY.train[0].update({"rewards/chosen": 0.0, "rewards/rejected": 0.0, "loss": math.log(2)})


def sick(check: str) -> RunTrace:
    """The healthy trace with one thing gone wrong, the way ``check`` should notice."""
    t = RunTrace([dict(r) for r in HEALTHY.train], [dict(r) for r in HEALTHY.evals],
                 HEALTHY.loss, list(HEALTHY.checkpoints))
    if check == "likelihood_displacement":
        for r in t.train[1:]:  # the chosen falls by more than the margin it buys
            r["rewards/chosen"] = -0.1 * r["step"]
    elif check == "length_drift":
        for r in t.evals:
            r["eval/gen/length_tokens"] = 20.0 + 2.0 * r["step"]
    elif check == "overfitting":
        for r in t.train:
            r["rewards/accuracies"] = 1.0
        for r, loss in zip(t.evals, (0.69, 0.40, 0.60), strict=True):
            r["eval/loss"] = loss
    elif check == "reward_scale":
        for r in t.train:
            r["rewards/saturated"] = 0.8
    elif check == "reference_mismatch":
        t.train[0].update({"rewards/chosen": 0.4, "rewards/rejected": -0.3, "loss": 0.45})
    elif check == "frozen":
        for r in t.train:
            r["learning_rate"] = 0.0
    elif check == "reward_hacking":
        for r, kl in zip(t.evals, (0.05, 0.6, 1.8), strict=True):
            r["eval/gen/kl"], r["eval/gen/reward"] = kl, 0.1
        t.evals[-1]["eval/gen/samples"] = [{"prompt": "p", "sample": "great great great"}]
    elif check == "non_finite":
        t.nonfinite = {"step": 7, "what": "the loss", "batch": "nonfinite_batch.pt",
                       "first_nonfinite": "the output of module model.layers.1.mlp"}
    elif check == "style_geometry":
        t.evals[-1]["eval/geometry/style_tdi_change"] = 0.5
    return t


def test_a_healthy_trace_has_no_findings():
    assert run_checks(HEALTHY) == []


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_each_check_finds_its_failure_and_only_its_own(check):
    findings = run_checks(sick(check))
    assert [f.check for f in findings] == [check]
    finding = findings[0]
    assert finding.severity in ("warning", "error") and finding.remedy
    assert any(c.isdigit() for c in finding.finding)  # the numbers are quoted
    assert finding.panel is None or finding.panel.startswith(("training: ", "held out: "))


def test_the_findings_quote_what_they_saw():
    [over] = run_checks(sick("overfitting"))
    assert "0.4000 at step 10" in over.finding and "checkpoint nearest to it is step 10" in \
        over.finding and over.step == 10
    [displaced] = run_checks(sick("likelihood_displacement"))
    assert "dpop" in displaced.remedy and "[sigmoid, sft]" in displaced.remedy
    bounced = sick("length_drift")  # longer at one evaluation, back near the start later
    for r, length in zip(bounced.evals, (30.0, 72.0, 37.0), strict=True):
        r["eval/gen/length_tokens"] = length
    [drift] = run_checks(bounced)
    assert "to 72.0 (step 10), +140%" in drift.finding and \
        "at the last evaluation (step 20) 37.0, +23%" in drift.finding and drift.step == 10
    [hacked] = run_checks(sick("reward_hacking"))
    assert "great great great" in hacked.finding
    [mismatch] = run_checks(sick("reference_mismatch"))
    assert "+0.4000" in mismatch.finding and "not ln 2" in mismatch.finding
    reference_free = sick("reference_mismatch")
    reference_free.loss = "simpo"  # its rewards are not 0 at the start, by design
    assert run_checks(reference_free) == []


def test_the_monitor_warns_once_per_check_at_evaluations():
    lines = []
    monitor = HealthMonitor(lines.append, "sigmoid")
    trace = sick("frozen")
    for row in trace.train[:5]:
        assert monitor.observe(row) == []  # training rows: no checks yet
    assert [f.check for f in monitor.observe(trace.evals[0])] == ["frozen"]
    for row in trace.train[5:] + trace.evals[1:]:
        monitor.observe(row)
    assert len(lines) == 1 and lines[0].startswith("health: frozen: the learning rate was 0")


def test_a_tiny_healthy_run_triggers_nothing(tmp_path, tokenizer):
    lines = []
    trainer = tiny_trainer(tmp_path, tokenizer, eval_rows=held_out_rows(), max_steps=6,
                           eval_every=3, learning_rate=1e-3)
    trainer.log = lines.append
    trainer.health.log = lines.append
    trainer.train()
    assert not [line for line in lines if line.startswith("health:")]
    from dpokit.train.health import load_trace

    trace, skipped = load_trace(tmp_path / "out")
    assert trace.loss == "sigmoid" and not skipped and run_checks(trace) == []


def test_a_run_with_a_learning_rate_of_zero_is_named_frozen_while_it_runs(tmp_path, tokenizer):
    lines = []
    trainer = tiny_trainer(tmp_path, tokenizer, eval_rows=held_out_rows(), max_steps=4,
                           eval_every=4)
    scheduler = trainer.scheduler  # a schedule that hands out 0 (the config refuses lr=0)
    scheduler.base_lrs = scheduler._last_lr = [0.0] * len(scheduler.base_lrs)
    for group in trainer.optimizer.param_groups:
        group["lr"] = group["initial_lr"] = 0.0
    trainer.health.log = lines.append
    trainer.train()
    assert [line.split(":")[1].strip() for line in lines] == ["frozen"]
