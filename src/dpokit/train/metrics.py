"""Metrics out: ``metrics.jsonl`` (one row per logged step and per evaluation) and the
trackers accelerate drives (``log_with``: tensorboard, wandb, mlflow, aim, comet_ml, when
installed). Only the main process writes.

    >>> format_eval({"step": 3, "eval/loss": 0.5, "eval/gpu/hours": 2.0})
    '[eval @ step 3] loss 0.5000'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.catalogue import Metric, declare, headline
from ..core.signals import cooperative, stop_point
from ..core.types import MetricSums

declare(  # what the loop logs every step (objectives, policies and evaluators declare theirs)
    Metric("loss", "loss (the objective's: DPO loss; SFT NLL per token)", "{:.4f}", "loss",
           headline=True),
    Metric("grad_norm", "gradient norm (before clipping)", "{:.3g}", "optimizer"),
    Metric("learning_rate", "learning rate", "{:.3g}", "optimizer"),
    Metric("examples_per_s", "examples per second", "{:.2f}", "throughput"),
    Metric("tokens_per_s", "tokens per second", "{:.1f}", "throughput"),
    Metric("num_tokens", "tokens in the step", "{:.0f}"),
    Metric("epoch", "epoch", "{:.3f}"),
)


def reduce_metrics(sums: MetricSums, accelerator: Any) -> MetricSums:
    """Sum (sum, count) metrics over processes (every process holds the same names)."""
    if accelerator.num_processes == 1:
        return sums
    names = sorted(sums.sums)
    total = accelerator.reduce(sums.as_tensor(names).to(accelerator.device), "sum").cpu()
    return MetricSums.from_tensor(names, total)


def objective_metrics(objective: Any, batches: Iterable[Any],
                      forward: Callable[[Any], Any]) -> dict[str, float]:
    """An objective's loss and metrics over held-out batches, each reduced over the whole set
    by its own count; ``forward(batch) -> ObjectiveOutput``."""
    sums = MetricSums()
    with cooperative():
        for batch in batches:
            stop_point("evaluation")  # SIGINT / SIGTERM: stop within one batch
            out = forward(batch)
            sums.add("loss", out.losses.float(), count=objective.units(batch))
            sums.merge(out.metrics)
    return sums.means()


class MetricsLogger:
    """Writes metric rows to ``output_dir/metrics.jsonl`` and to accelerate's trackers."""

    def __init__(self, output_dir: str | Path, accelerator: Any, run_config: dict[str, Any],
                 health: Any = None, project: str = "dpokit"):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.health = health  # a HealthMonitor: the live checks, on the main process
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.trackers = bool(accelerator.log_with)
        if self.trackers:
            accelerator.init_trackers(project, config=_flat(run_config))

    def emit(self, metrics: dict[str, Any]) -> None:
        if self.trackers:
            scalars = {k: v for k, v in metrics.items()
                       if k != "step" and isinstance(v, (int, float))}
            self.accelerator.log(scalars, step=metrics["step"])
        if not self.main:
            return
        if self.health is not None:
            self.health.observe(metrics)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    @staticmethod
    def truncate(output_dir: str | Path, step: int) -> None:
        """Drop the rows of steps after ``step`` (written after the checkpoint a run resumes
        from), and a line a killed process left half-written, so that every step is in
        ``metrics.jsonl`` exactly once."""
        path = Path(output_dir) / "metrics.jsonl"
        if not path.is_file():
            return
        rows = [row for row in read_metrics(path).rows if row.get("step", 0) <= step]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def close(self) -> None:
        if self.trackers:
            self.accelerator.end_training()


def record_run(output_dir: str | Path, config: dict[str, Any], objective: str) -> Path:
    """``run.json`` in the run folder: the config and the objective's name (what ``dpokit
    doctor`` reads: the loss, the data files)."""
    path = Path(output_dir) / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"objective": objective, "config": config}, indent=1,
                               default=str))
    return path


@dataclass
class MetricRows:
    """The complete rows of a ``metrics.jsonl`` and what was skipped (line number: reason)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_metrics(path: str | Path) -> MetricRows:
    """Every complete row of a metrics file; a line that is not a JSON object (the half-written
    last line a killed run leaves) is skipped and named.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "m.jsonl").write_text('{"step": 1}\\n{"step": 2, "lo')
    >>> read_metrics(folder / "m.jsonl").skipped
    ['line 2: incomplete (not a JSON object)']
    """
    out = MetricRows()
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            out.rows.append(row)
        else:
            out.skipped.append(f"line {number}: incomplete (not a JSON object)")
    return out


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat ``section.key`` scalars (trackers' hyper-parameter tables)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = (
                value if isinstance(value, (int, float, str, bool)) else str(value)
            )
    return out


def format_eval(m: dict[str, Any]) -> str:
    """One line of the headline eval figures present (the catalogue's ``headline``)."""
    return f"[eval @ step {m['step']}] " + headline(m)


def progress_bar(enabled: bool, desc: str, total: int | None = None, initial: int = 0):
    """A tqdm bar (``total`` given) or a wrapper for iterables (``total`` None); None when
    progress bars are off or this is not the main process."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    if total is None:
        return lambda items: tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
