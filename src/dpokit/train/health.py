"""Health checks: the ways a DPO run goes wrong, read from its own metrics. Each check is a
small function over a :class:`RunTrace` (the training and evaluation rows, the loss, the
checkpoints) returning a :class:`Finding` (severity, one sentence that quotes the numbers,
what to try) or None. The loop runs the live ones at each evaluation and warns once per
check (:class:`HealthMonitor`); ``dpokit doctor`` and ``dpokit report`` run them all over a
finished or crashed run.

    >>> rows = [{"step": s, "loss": 0.69, "learning_rate": 0.0, "grad_norm": 1.0}
    ...         for s in range(1, 6)]
    >>> [f.check for f in run_checks(RunTrace(rows))]
    ['frozen']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..objectives.preference import SATURATED
from .trace import (  # noqa: F401 (the trace's names, read from here by the readers too)
    EVAL,
    HELD_OUT,
    SERIES,
    TRAINING,
    Course,
    Finding,
    RunTrace,
    _ends,
    courses,
    is_eval_row,
    load_trace,
)

Check = Callable[[RunTrace], "Finding | None"]
CHECKS: dict[str, Check] = {}
LIVE: set[str] = set()  # the checks the loop runs at each evaluation


def check(name: str, live: bool = True) -> Callable[[Check], Check]:
    """Register a check (``live``: also during training, from the metrics so far)."""
    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        if live:
            LIVE.add(name)
        return fn
    return register


def run_checks(trace: RunTrace, names: set[str] | None = None) -> list[Finding]:
    """The findings of every registered check (or of ``names``), in registration order."""
    found = [CHECKS[n](trace) for n in CHECKS if names is None or n in names]
    return [f for f in found if f is not None]


@check("likelihood_displacement")
def likelihood_displacement(trace: RunTrace) -> Finding | None:
    """The chosen answer loses more likelihood (against the reference) than it gains over the
    rejected one, while the margin grows: DPO pushing both answers down, the rejected faster
    (Pal et al. 2024; Razin et al. 2025). Read from the implicit rewards (β · log-ratios),
    which compare each answer with itself under the reference, so batches of different
    lengths do not move them; a chosen reward that falls by less than the margin is the
    usual, tolerated, course of DPO. Read on held-out pairs (first and last evaluation) and on
    training batches; the finding names the series that fired."""
    for chosen, margin in courses(trace, "rewards/chosen", "rewards/margins",
                                  panel="implicit-reward margin"):
        if chosen.end < 0 and -chosen.end > max(margin.end, 0.0) and margin.end > margin.start:
            return Finding("likelihood_displacement", "warning", chosen.step,
                           f"on {chosen.series}, the chosen answers' implicit reward fell to "
                           f"{chosen.end:+.3f} (from {chosen.start:+.3f}), more than the reward "
                           f"margin it bought ({margin.start:+.3f} -> {margin.end:+.3f}): the "
                           f"chosen answers are now less likely than under the reference.",
                           "loss: dpop (a penalty when the chosen log-prob falls below the "
                           "reference's), or RPO's NLL term: loss: [sigmoid, sft].",
                           chosen.panel, chosen.series)
    return None


@check("length_drift")
def length_drift(trace: RunTrace) -> Finding | None:
    """The model's own samples grew longer than at the first evaluation by more than 30% at
    some evaluation (the longest is named, and where the last one stands, so a run that the
    live check warned about is named here too)."""
    lengths = trace.series(EVAL + "gen/length_tokens")
    if len(lengths) < 2 or lengths[0][1] <= 0:
        return None
    (first_step, first), (last_step, last) = lengths[0], lengths[-1]
    peak_step, peak = max(lengths[1:], key=lambda p: p[1])
    if peak > 1.3 * first:
        now = "" if peak_step == last_step else (
            f"; at the last evaluation (step {last_step}) {last:.1f}, {last / first - 1:+.0%}")
        return Finding("length_drift", "warning", peak_step,
                       f"the mean length of the model's samples grew from {first:.1f} tokens "
                       f"(step {first_step}) to {peak:.1f} (step {peak_step}), "
                       f"{peak / first - 1:+.0%}{now}.",
                       "SamPO (sampo=true), LD-DPO (ld_alpha=0.5) or a length-normalized "
                       "loss (simpo, ipo_norm); check the data's length bias with "
                       "`dpokit data inspect`.",
                       "held out: length of own samples")
    return None


@check("overfitting")
def overfitting(trace: RunTrace) -> Finding | None:
    """Training accuracy near 1 while the held-out loss has risen from its best."""
    accuracy = _ends(trace.series("rewards/accuracies"))
    held = trace.series(EVAL + "loss")
    if accuracy is None or len(held) < 3 or accuracy[1] < 0.95:
        return None
    best_step, best = min(held, key=lambda p: p[1])
    last_step, last = held[-1]
    if last - best > max(0.02, 0.1 * abs(best)):
        near = min(trace.checkpoints, key=lambda s: abs(s - best_step), default=None)
        keep = f"; the checkpoint nearest to it is step {near}" if near is not None else ""
        return Finding("overfitting", "warning", best_step,
                       f"training accuracy is {accuracy[1]:.2f} while the held-out loss rose "
                       f"from its best, {best:.4f} at step {best_step}, to {last:.4f} at step "
                       f"{last_step}{keep}.",
                       "fewer epochs or a lower learning rate, more pairs, or the weights of "
                       "the best step (save_every, eval_every).", "held out: loss")
    return None


@check("reward_scale")
def reward_scale(trace: RunTrace) -> Finding | None:
    """Most pairs saturate the sigmoid (no gradient left), or the implicit rewards grow
    without bound (beta too small for the data); on held-out pairs (their last evaluation)
    and on training batches (the last fifth), the series that fired named."""
    for series, prefix, where in SERIES:
        sat = trace.series(prefix + "rewards/saturated")
        level = (sat[-1][1] if sat else None) if prefix else (_ends(sat) or (0.0, None))[1]
        if level is not None and level > 0.5:
            return Finding("reward_scale", "warning", sat[-1][0],
                           f"on {series}, {level:.0%} of the pairs have a reward margin past "
                           f"{SATURATED:g}, where the sigmoid loss gives no gradient.",
                           "a smaller beta, fewer steps, beta_dpo (β set from each batch's "
                           "margins), or ipo (whose loss does not saturate).",
                           f"{where}: implicit-reward margin", series)
        chosen = trace.series(prefix + "rewards/chosen")
        rejected = trace.series(prefix + "rewards/rejected")
        if chosen and rejected and max(abs(chosen[-1][1]), abs(rejected[-1][1])) > 20:
            return Finding("reward_scale", "warning", chosen[-1][0],
                           f"on {series}, the implicit rewards reached {chosen[-1][1]:+.1f} "
                           f"(chosen) and {rejected[-1][1]:+.1f} (rejected): the policy has "
                           f"moved far from the reference.",
                           "a larger beta (the KL penalty's weight) or a lower learning rate.",
                           f"{where}: implicit-reward margin", series)
    return None


@check("reference_mismatch", live=False)
def reference_mismatch(trace: RunTrace) -> Finding | None:
    """At the first step the policy is its reference, so every implicit reward is 0 and the
    sigmoid loss is ln 2; anything else means the reference is not the starting policy. Read
    at the baseline evaluation (held-out pairs at step 0) and at the first training step."""
    if not _needs_reference(trace.loss):
        return None
    rows = ([r for r in trace.evals[:1] if r.get("step") == 0], trace.train[:1])
    for (series, prefix, where), first in ((k, r[0]) for k, r in zip(SERIES, rows, strict=True)
                                           if r):
        rewards = [first.get(prefix + "rewards/chosen"), first.get(prefix + "rewards/rejected")]
        loss = first.get(prefix + "loss")
        if all(isinstance(r, int | float) for r in rewards) and max(map(abs, rewards)) > 0.05:
            detail = f", and the loss is {loss:.4f}, not ln 2 = 0.6931" if (
                trace.loss == "sigmoid" and isinstance(loss, float)) else ""
            when = "at the baseline evaluation" if prefix else "at the first step"
            return Finding("reference_mismatch", "error", first.get("step"),
                           f"{when} ({series}) the implicit rewards are {rewards[0]:+.4f} "
                           f"(chosen) and {rewards[1]:+.4f} (rejected), not 0{detail}.",
                           "make the reference the starting policy: reference=auto, or the "
                           "same adapter or weights as model=; dropout off "
                           "(disable_dropout=true).", f"{where}: implicit-reward margin", series)
    return None


def _needs_reference(loss: str | None) -> bool:
    if not loss:
        return False
    from ..losses import get_loss

    try:
        return any(get_loss(name).needs_reference for name in loss.split("+"))
    except KeyError:
        return False


@check("frozen")
def frozen(trace: RunTrace) -> Finding | None:
    """Nothing is learned: a learning rate of 0, no gradient reaching the trained weights, or
    a loss that does not move."""
    rates = trace.series("learning_rate")
    if len(rates) >= 3 and all(v == 0 for _, v in rates):
        return Finding("frozen", "error", rates[-1][0],
                       f"the learning rate was 0 at all {len(rates)} logged steps: the weights "
                       f"never changed.", "set learning_rate (and check the warmup / schedule).",
                       "training: optimizer")
    norms = trace.series("grad_norm")
    if len(norms) >= 3 and max(v for _, v in norms) < 1e-10:
        return Finding("frozen", "error", norms[-1][0],
                       f"the gradient norm stayed below 1e-10 over {len(norms)} steps: no "
                       f"gradient reaches the trained weights.",
                       "check lora_target_modules / which parameters require grad.",
                       "training: optimizer")
    losses = trace.series("loss")
    if len(losses) >= 5 and max(v for _, v in losses) - min(v for _, v in losses) < 1e-9:
        return Finding("frozen", "error", losses[-1][0],
                       f"the loss stayed at {losses[0][1]:.6f} over {len(losses)} steps.",
                       "check the learning rate and which parameters are trained.",
                       "training: loss")
    return None


@check("reward_hacking")
def reward_hacking(trace: RunTrace) -> Finding | None:
    """The KL to the reference climbs fast while the reward of the samples stalls."""
    kl, reward = trace.series(EVAL + "gen/kl"), trace.series(EVAL + "gen/reward")
    if len(kl) < 2 or len(reward) < 2:
        return None
    grew = kl[-1][1] - kl[0][1]
    gained = reward[-1][1] - reward[0][1]
    if kl[-1][1] > 0.5 and kl[-1][1] > 2 * max(kl[0][1], 0.05) and gained < 0.05 * abs(
            reward[0][1]) + 0.01:
        last = next((r for r in reversed(trace.evals) if r.get(EVAL + "gen/samples")), {})
        shown = "; ".join(repr(s.get("sample", ""))[:80] for s in
                          last.get(EVAL + "gen/samples", [])[:2])
        samples = f" Samples at step {last.get('step')}: {shown}." if shown else ""
        return Finding("reward_hacking", "warning", kl[-1][0],
                       f"the KL to the reference rose by {grew:.3f} nats to {kl[-1][1]:.3f} "
                       f"while the reward of the samples changed by {gained:+.4f}.{samples}",
                       "read the samples; a larger beta, fewer steps, or a better reward.",
                       "held out: KL to the reference (nats per sample)")
    return None


@check("non_finite", live=False)  # live, the guard itself stops the run and says it
def non_finite(trace: RunTrace) -> Finding | None:
    """The NaN guard stopped the run; its replay named the first non-finite tensor."""
    record = trace.nonfinite
    if not record:
        return None
    first = record.get("first_nonfinite") or "not found by the replay"
    saved = f"; the batch is in {record['batch']}" if record.get("batch") else ""
    return Finding("non_finite", "error", record.get("step"),
                   f"{record.get('what', 'a value')} became non-finite at step "
                   f"{record.get('step')}; first non-finite tensor: {first}{saved}.",
                   "a lower learning_rate, max_grad_norm, mixed_precision=fp32; load the "
                   "batch with torch.load to reproduce.", "training: loss")


@check("style_geometry", live=False)  # the live warning is the geometry monitor's own
def style_geometry(trace: RunTrace) -> Finding | None:
    """Style TDI rose past ``geometry.warn_increase`` over its first value."""
    changes = trace.series(EVAL + "geometry/style_tdi_change")
    if changes and changes[-1][1] > trace.warn_increase:
        step, change = changes[-1]
        return Finding("style_geometry", "warning", step,
                       f"Style TDI rose {change:+.1%} over its first value, past "
                       f"warn_increase={trace.warn_increase:.0%}: the hidden states care more "
                       f"about style.", "geometry.regularizer=finite_difference",
                       "held out: Style TDI (embedding layout, lower is better)")
    return None


class HealthMonitor:
    """The live checks: fed every metrics row, run at each evaluation, each check warned
    once (``log``) the first time it fires."""

    def __init__(self, log: Callable[[str], Any], loss: str | None = None,
                 warn_increase: float = 0.2):
        self.trace = RunTrace(loss=loss, warn_increase=warn_increase)
        self.log, self.fired = log, set()

    def preload(self, rows: list[dict[str, Any]]) -> None:
        """The rows a resumed run's earlier session logged (its step-0 baseline included), so
        that the live checks read the whole run; what they find there was warned then."""
        for row in rows:
            self.trace.add(row)
        self.fired |= {f.check for f in run_checks(self.trace, LIVE)}

    def observe(self, row: dict[str, Any]) -> list[Finding]:
        self.trace.add(row)
        if not is_eval_row(row):
            return []
        new = [f for f in run_checks(self.trace, LIVE) if f.check not in self.fired]
        for finding in new:
            self.fired.add(finding.check)
            self.log(f"health: {finding.line()}")
        return new
