"""The training loop: one explicit, readable loop for every objective, on accelerate.

One optimizer step = the micro-batches its data source gives this process. Each micro-batch
contributes ``sum(per-example losses) * processes / (units in the whole step, all processes)``,
where units are what the objective averages over (pairs, tokens), so accumulation, packing
and data-parallel splits give the update of one big batch. The services it composes each live
in their own module: ``sources`` (data order), ``reference`` (precompute, cache, TR-DPO),
``checkpoint``, ``folder`` (ownership, lock), ``resume`` (what may continue), ``signals``,
``strategy`` (launch), ``metrics`` (JSONL, trackers), ``optim``.

The parts it loops with are built once, at the top, by :mod:`~dpokit.train.setup` (the run
builder's composition root); :func:`make_trainer` builds both.

    >>> trainer = make_trainer(cfg, policy, objective, StaticSource(pairs, 4))  # doctest: +SKIP
    >>> result = trainer.train()                                                # doctest: +SKIP
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config.schema import TrainConfig
from ..core.hardware import HardwareChoice, write_record
from ..core.protocols import DataSource, Objective, ObjectiveOutput, Policy, Regularizer
from ..core.signals import Interrupted, cooperative
from ..core.types import MetricSums
from .anomaly import replay_step
from .checkpoint import model_card, push_to_hub, save_final
from .metrics import (
    MetricsLogger,
    format_eval,
    objective_metrics,
    progress_bar,
    read_metrics,
    record_run,
    reduce_metrics,
)
from .resume import find_resumable, run_signature
from .setup import LoopParts, autocast, build_parts
from .sources import EvalSet


class NonFiniteError(RuntimeError):
    """The loss or the gradient became NaN/inf; the run stopped before stepping."""


@dataclass
class TrainResult:
    step: int
    history: list[dict] = field(default_factory=list)  # one record per logged step
    eval_history: list[dict] = field(default_factory=list)


class Trainer:
    """Trains any :class:`~dpokit.core.Policy` with any :class:`~dpokit.core.Objective` on
    any :class:`~dpokit.core.DataSource`."""

    def __init__(self, cfg: TrainConfig, parts: LoopParts, policy: Policy, objective: Objective,
                 source: DataSource, eval_set: EvalSet | None = None, *,
                 log: Callable[[str], None] = print,
                 evaluators: Sequence[Callable[[Policy], dict[str, float]]] = (),
                 regularizers: Sequence[Regularizer] = ()):
        """``parts``: built by :func:`~dpokit.train.setup.build_parts` (the run builder's
        composition root); the trainer keeps them and loops."""
        self.cfg, self.policy, self.objective = cfg, policy, objective
        self.source, self.eval_set, self.log = source, eval_set, log
        self.evaluators = list(evaluators)  # more held-out figures (generation), eval/ keys
        self.evaluating = eval_set is not None or bool(self.evaluators)
        self.regularizers = list(regularizers)  # weight * value added to every step's loss
        self.folder, self.hardware, self.accelerator = parts.folder, parts.hardware, \
            parts.accelerator
        self.precision, self.world, self.rank = parts.precision, parts.world, parts.rank
        self.stop, self.engine, self.scheduler = parts.stop, parts.engine, parts.scheduler
        self.optimizer, self.reference = parts.engine.optimizer, parts.reference
        self.checkpoints, self.health = parts.checkpoints, parts.health
        self.total_steps, self.strategy = parts.total_steps, cfg.distributed.strategy
        self.output_dir = Path(cfg.run.output_dir)
        self._metrics: MetricsLogger | None = None
        self._last_eval: dict = {}
        self._step_batches: list = []
        self.step = 0

    # --- precision ---------------------------------------------------------------------------
    def autocast(self, precision: str | None = None):
        """Autocast of the forwards in the run's precision (or ``precision``)."""
        return autocast(self.accelerator.device.type, precision or self.precision)

    # --- one step ----------------------------------------------------------------------------
    def _forward(self, batch: Any, table: str | None) -> ObjectiveOutput:
        ref = self.reference.scores(batch, table or "")
        with self.autocast():
            return self.objective(self.policy, batch, ref)

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        if not torch.isfinite(value).all():
            latest = self.checkpoints.latest()
            kept = (f"the last good checkpoint, {latest}, is intact" if latest
                    else "no checkpoint was written")
            found = replay_step(self.engine.modules, lambda b: self._forward(b, "train").losses,
                                self._step_batches, what=what, step=self.step + 1,
                                folder=self.output_dir, world=self.world,
                                is_main=self.accelerator.is_main_process)  # the first NaN
            raise NonFiniteError(f"{what} is {value.item() if value.numel() == 1 else value} at "
                                 f"step {self.step + 1}; stopping before the optimizer step "
                                 f"({kept}){found}. Try a lower learning_rate or "
                                 f"mixed_precision=fp32.")

    def _global_sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            t = self.accelerator.reduce(t.to(self.accelerator.device), "sum").cpu()
        return t.tolist()

    def _regularize(self, sums: MetricSums, task_loss: float) -> None:
        """Each regularizer's ``weight * value`` (capped: at most ``cap_ratio * task_loss``),
        backpropagated unsynced: every process computes the same penalty and gradient."""
        for reg in self.regularizers:
            with self.engine.paused():
                with self.autocast():
                    value = reg(self.policy, self.step).value.float()
                self._check_finite(value, f"the {reg.name} regularizer")
                term = value * reg.weight
                if reg.cap_ratio > 0:
                    cap = torch.tensor(reg.cap_ratio * task_loss, device=term.device)
                    sums.add(f"reg/{reg.name}_capped", (term.detach() > cap).float().reshape(1))
                    term = torch.minimum(term, cap)
                self.engine.backward(term)
            sums.add(f"reg/{reg.name}", value.reshape(1))

    def _train_step(self) -> dict:
        started = time.perf_counter()
        device = self.accelerator.device
        batches = [b.to(device) for b in self.source.micro_batches(self.step, self.policy)]
        self._step_batches = batches  # what the NaN guard replays (_check_finite)
        units = [self.objective.units(b) for b in batches]
        examples = sum(len(b.example_index) for b in batches)
        step_units, step_examples = self._global_sum(sum(units), examples)
        if step_units == 0:  # every row of the step was a skipped bad row (a streamed source)
            return self._empty_step()
        scale = self.world / step_units  # DDP averages over processes; we want the global mean
        sums, tokens = MetricSums(), 0
        for i, batch in enumerate(batches):
            tokens += batch.num_tokens
            with ExitStack() as stack:  # skip the gradient all-reduce until the last
                if i < len(batches) - 1:
                    stack.enter_context(self.engine.paused())
                out = self._forward(batch, "train")
                loss_sum = out.losses.sum()
                self._check_finite(loss_sum, "the loss")
                self.engine.backward(loss_sum * scale)
            sums.add("loss", out.losses.float(), count=units[i])
            sums.merge(out.metrics)
        if self.regularizers:  # after the micro-batches: a cap reads the step's mean loss
            self._regularize(sums, self._global_sum(sums.sums["loss"])[0] / step_units)
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        lr = self.scheduler.get_last_lr()[0]
        grad_norm = self.engine.step(self.policy.trainable_parameters(), max_norm,
                                     lambda norm: self._check_finite(norm, "the gradient norm"))
        self.scheduler.step()
        self.step += 1
        self.reference.after_step(self.step)
        metrics = reduce_metrics(sums, self.accelerator).means()
        metrics.update(self.source.step_metrics())
        seconds = time.perf_counter() - started
        epoch = self.step / self.source.steps_per_epoch if self.source.steps_per_epoch else None
        step_tokens = self._global_sum(tokens)[0]
        metrics.update(self.engine.step_metrics())  # fp16: loss scale, skipped steps
        if math.isfinite(grad_norm):  # (an fp16 overflow's step was skipped)
            metrics["grad_norm"] = float(grad_norm)
        metrics.update({"learning_rate": lr, "examples_per_s": step_examples / seconds,
                        "num_tokens": step_tokens, "tokens_per_s": step_tokens / seconds,
                        "epoch": epoch, "step": self.step})
        return metrics

    def _empty_step(self) -> dict:
        """A step whose rows were all skipped: no update, the schedule still advances, and
        the step is logged with its skip counts (no loss)."""
        warnings.warn(f"step {self.step + 1} had no usable rows (all skipped); no update",
                      stacklevel=3)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        return {**self.source.step_metrics(), "learning_rate": lr, "num_tokens": 0.0,
                "step": self.step}

    # --- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, eval_set: EvalSet | None = None) -> dict:
        """The objective's loss and metrics on held-out examples, and the evaluators' figures
        (``eval/`` prefixed)."""
        eval_set = eval_set or self.eval_set
        table = "eval" if eval_set is self.eval_set else None
        self.policy.train(False)
        self.objective.train(False)  # running statistics are read, not updated
        metrics: dict[str, Any] = {}
        if eval_set is not None:
            device = self.accelerator.device
            means = objective_metrics(self.objective, eval_set.batches(),
                                      lambda batch: self._forward(batch.to(device), table))
            metrics = {f"eval/{k}": v for k, v in means.items()}
        for evaluator in self.evaluators:
            metrics.update(evaluator(self.policy))
        self.policy.train(True)
        self.objective.train(True)
        metrics["step"] = self.step
        return metrics

    def _run_eval(self, result: TrainResult) -> None:
        try:
            metrics = self.evaluate()
        except Interrupted:
            if self.step == 0:
                raise
            # stopped inside an evaluation at a step boundary: keep the step as a checkpoint
            raise self._interrupted_here() from None
        result.eval_history.append(metrics)
        self._emit(metrics)
        self.log(format_eval(metrics))

    # --- checkpoints -------------------------------------------------------------------------
    def signature(self) -> dict[str, Any]:
        """What the run computes: its data, the config fields that change the math, the code."""
        config = self.cfg.to_dict()
        config["optim"]["mixed_precision"] = self.precision  # what auto chose on this machine
        return run_signature(config, self.source.fingerprint, self.world)

    def save_checkpoint(self) -> Path:
        return self.checkpoints.save(self.step, self.policy, self.engine, self.scheduler,
                                     self.source.state_dict(), self.signature(),
                                     self.objective.state_dict())

    def load_checkpoint(self, path: Path) -> None:
        restored = self.checkpoints.load(path, self.policy, self.engine, self.scheduler)
        self.step = restored.step
        self.source.load_state_dict(restored.source)
        self.objective.load_state_dict(restored.objective)

    def _resume(self) -> None:
        """Continue from the newest checkpoint that is intact and computes what this run does
        (or any difference allowed by ``resume_allow_changes``)."""
        path = find_resumable(self.checkpoints, self.signature(), self.cfg.run.resume_allow_changes)
        if path is None:
            self.log(f"resume: no checkpoint in {self.checkpoints.root}; starting fresh")
            return
        self.load_checkpoint(path)
        self.log(f"resume: continuing from {path} (step {self.step})")
        if self.accelerator.is_main_process:
            MetricsLogger.truncate(self.output_dir, self.step)
            metrics = self.output_dir / "metrics.jsonl"
            if metrics.is_file():  # the live checks read the whole run, its baseline too
                self.health.preload(read_metrics(metrics).rows)

    def _record_hardware(self) -> None:
        """The device and precision (one line); in the run folder, ``hardware.json`` (versions,
        speed) and ``run.json`` (the config and objective ``dpokit doctor`` reads)."""
        self.log(self.hardware.line())
        if self.accelerator.is_main_process:
            write_record(self.hardware, self.output_dir)
            record_run(self.output_dir, self.cfg.to_dict(), self.objective.name)

    def _interrupted_here(self) -> Interrupted:
        """A stop at this step boundary: the step kept as a checkpoint (saved unless it is
        already), the signal and where to continue from."""
        saved = self.checkpoints.latest()
        if saved is None or not saved.name.endswith(f"{self.step:07d}"):
            saved = self.save_checkpoint()
        return Interrupted(self.stop.signum or signal.SIGTERM, self.step, saved)

    def _stop_requested(self) -> bool:
        if self.world == 1:
            return self.stop.requested
        return self._global_sum(1.0 if self.stop.requested else 0.0)[0] > 0

    # --- output ------------------------------------------------------------------------------
    def _progress(self, desc: str, total: int | None = None):
        enabled = self.cfg.run.progress_bar and self.accelerator.is_main_process
        return progress_bar(enabled, desc, total, self.step)

    def _emit(self, metrics: dict) -> None:  # the live health checks read every row
        self._metrics = self._metrics or MetricsLogger(self.output_dir, self.accelerator,
                                                       self.cfg.to_dict(), self.health)
        self._metrics.emit(metrics)

    # --- the loop ----------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Train to ``total_steps``, holding the output folder's lock; SIGINT / SIGTERM save a
        checkpoint at the next step boundary and raise :class:`Interrupted`."""
        with self.folder.locked(), self.stop.installed(), cooperative():
            self.folder.claim(self.cfg.run.resume, self.cfg.run.overwrite_output_dir)
            self._record_hardware()
            if self.cfg.run.resume:
                self._resume()
            return self._train()

    def _train(self) -> TrainResult:
        run = self.cfg.run
        result = TrainResult(step=0)
        self.reference.prepare("train", self.source)
        self.reference.prepare("eval", self.eval_set)
        if self.evaluating and run.eval_before and self.step == 0:
            self._run_eval(result)
        self.policy.train(True)
        bar = self._progress("dpokit", self.total_steps)
        evaluated_at = None
        while self.step < self.total_steps:
            metrics = self._train_step()
            if self.step % run.log_every == 0 or self.step == self.total_steps:
                result.history.append(metrics)
                self._emit(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            if self.evaluating and run.eval_every and self.step % run.eval_every == 0:
                self._run_eval(result)
                evaluated_at = self.step
            if run.save_every and self.step % run.save_every == 0:
                self.save_checkpoint()
            if self._stop_requested():
                if bar is not None:
                    bar.close()
                raise self._interrupted_here()
        if bar is not None:
            bar.close()
        if self.evaluating and evaluated_at != self.step:
            self._run_eval(result)
        result.step = self.step
        self._last_eval = result.eval_history[-1] if result.eval_history else {}
        return result

    def save_final(self, directory: str | Path | None = None) -> Path:
        """Save the trained model (or adapter) with a model card, atomically; upload it when
        ``push_to_hub`` names a repo."""
        cfg = self.cfg
        target = Path(directory) if directory else self.output_dir / "final"
        with self.folder.locked():
            card = model_card(self.policy.describe(), cfg, self.objective.name,
                              self._last_eval, self.precision)
            save_final(self.policy, target, card,
                       self.accelerator.is_main_process, self.accelerator.wait_for_everyone)
        if cfg.run.push_to_hub and self.accelerator.is_main_process:
            self.log(f"pushed to {push_to_hub(target, cfg.run.push_to_hub)}")
        return target

    def close(self) -> None:
        """End a run: wait for every process, close trackers, tear the process group down, so
        that no process exits while another still talks to it (gloo can abort the survivor)."""
        self.accelerator.wait_for_everyone()
        if self.world > 1 or (self._metrics is not None and self._metrics.trackers):
            self.accelerator.end_training()


def make_trainer(cfg: TrainConfig, policy: Policy, objective: Objective, source: DataSource,
                 eval_set: EvalSet | None = None, *, accelerator: Any = None,
                 trackers: tuple[Any, ...] = (), log: Callable[[str], None] = print,
                 evaluators: Sequence[Callable[[Policy], dict[str, float]]] = (),
                 regularizers: Sequence[Regularizer] = (),
                 hardware: HardwareChoice | None = None):
    """The parts (:func:`build_parts`) and the :class:`~dpokit.train.loop.Trainer` that loops
    with them."""
    parts = build_parts(cfg, policy, objective, source, accelerator=accelerator,
                        trackers=trackers, log=log, hardware=hardware)
    return Trainer(cfg, parts, policy, objective, source, eval_set, log=log,
                   evaluators=evaluators, regularizers=regularizers)
