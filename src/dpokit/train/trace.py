"""What the health checks read: a run's trace (its training and evaluation rows, the loss,
the checkpoints kept, read from a run folder by :func:`load_trace`), a figure's course in one
series (held-out pairs or training batches), and a check's :class:`Finding`.

    >>> trace = RunTrace([{"step": s, "loss": 0.5 * s} for s in (1, 2, 3)])
    >>> trace.series("loss")[-1]
    (3, 1.5)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EVAL = "eval/"


@dataclass(frozen=True)
class Finding:
    """check: its name; severity: ``warning`` or ``error``; step: where the evidence points;
    finding: one sentence quoting the numbers; remedy: what to try; panel: the title of the
    report's plot that shows the evidence (``training: log-probs``)."""

    check: str
    severity: str
    step: int | None
    finding: str
    remedy: str
    panel: str | None = None
    series: str | None = None  # which series fired: "held-out pairs" or "training batches"

    def line(self) -> str:
        return f"{self.check}: {self.finding} Try: {self.remedy}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunTrace:
    """What the checks read: training rows, evaluation rows (``eval/`` keys), the loss's
    name (``sigmoid``, ``sigmoid+sft``; None when unknown), the checkpoint steps kept."""

    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    loss: str | None = None
    checkpoints: list[int] = field(default_factory=list)
    warn_increase: float = 0.2
    config: dict[str, Any] = field(default_factory=dict)  # run.json's, when there is one
    nonfinite: dict[str, Any] | None = None  # nonfinite.json: what the NaN guard replayed

    def add(self, row: dict[str, Any]) -> None:
        (self.evals if is_eval_row(row) else self.train).append(row)

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a key over the rows that carry it as a finite number (not a
        boolean)."""
        rows = self.evals if key.startswith(EVAL) else self.train
        return [(int(r.get("step", 0)), float(r[key])) for r in rows
                if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)
                and math.isfinite(r[key])]


def is_eval_row(row: dict[str, Any]) -> bool:
    """An evaluation's row of ``metrics.jsonl`` (its figures carry the ``eval/`` prefix)."""
    return any(k.startswith(EVAL) for k in row)


def _ends(points: list[tuple[int, float]], share: float = 0.2) -> tuple[float, float] | None:
    """Means of the first and last ``share`` of a series (at least one point each)."""
    if len(points) < 3:
        return None
    n = max(1, int(len(points) * share))
    values = [v for _, v in points]
    return sum(values[:n]) / n, sum(values[-n:]) / n


@dataclass(frozen=True)
class Course:
    """Where a figure started and ended in one series: on held-out pairs, the first and the
    last evaluation (the first is the baseline at step 0 when ``eval_before``); on training
    batches, the means of the first and last fifth of the logged steps. ``panel``: the
    report's plot of that series (``held out: ...`` / ``training: ...``)."""

    series: str
    start: float
    end: float
    step: int
    panel: str


HELD_OUT, TRAINING = "held-out pairs", "training batches"
SERIES = ((HELD_OUT, EVAL, "held out"), (TRAINING, "", "training"))  # name, key prefix, panel


def courses(trace: RunTrace, *keys: str, panel: str) -> list[tuple[Course, ...]]:
    """The courses of ``keys`` (training names, ``rewards/chosen``) in each series that has
    all of them: held-out pairs first (two evaluations suffice), then training batches
    (three logged steps)."""
    found = []
    held = [trace.series(EVAL + k) for k in keys]
    if all(len(s) >= 2 for s in held):
        found.append(tuple(Course(HELD_OUT, s[0][1], s[-1][1], s[-1][0], f"held out: {panel}")
                           for s in held))
    ends = [_ends(trace.series(k)) for k in keys]
    if all(e is not None for e in ends):
        step = trace.train[-1].get("step")
        found.append(tuple(Course(TRAINING, e[0], e[1], step, f"training: {panel}")
                           for e in ends))
    return found


def load_trace(folder: str | Path) -> tuple[RunTrace, list[str]]:
    """A run folder's trace: the complete rows of ``metrics.jsonl``, the loss and
    ``warn_increase`` from ``run.json``, the checkpoint steps kept; and the lines skipped (a
    line a kill cut short)."""
    from .metrics import MetricRows, read_metrics

    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    read = read_metrics(metrics) if metrics.is_file() else MetricRows()  # (stopped at step 1)
    trace = RunTrace()
    for row in read.rows:
        trace.add(row)
    try:
        run = json.loads((folder / "run.json").read_text())
        trace.loss, trace.config = run.get("objective"), run.get("config") or {}
        trace.warn_increase = run["config"]["geometry"]["warn_increase"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no or an unreadable record: the checks that need the loss are skipped
    try:
        trace.nonfinite = json.loads((folder / "nonfinite.json").read_text())
    except (OSError, ValueError):
        pass
    steps = [p.name.rpartition("-")[2] for p in (folder / "checkpoints").glob("step-*")]
    trace.checkpoints = sorted(int(s) for s in steps if s.isdigit())
    return trace, [f"{metrics}, {reason}" for reason in read.skipped]
