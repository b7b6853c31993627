"""The loop's parts, built once at the top from their config sections: the run folder, the
hardware's choice, the Accelerator, stop requests, the engine (optimizer and schedule), the
reference service, checkpoints and the health monitor. A run builder (``runs/``) builds them
and hands them to :class:`~dpokit.train.loop.Trainer`, which only loops.

    >>> parts = build_parts(cfg, policy, objective, source)          # doctest: +SKIP
    >>> Trainer(cfg, parts, policy, objective, source).train()      # doctest: +SKIP
    >>> make_trainer(cfg, policy, objective, source).train()  # both (loop.py)  # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config.schema import TrainConfig
from ..core.hardware import DTYPES, HardwareChoice, resolve
from ..core.protocols import DataSource, Objective, Policy
from ..core.signals import StopRequests
from .checkpoint import CheckpointStore
from .engines import TorchEngine, ZeroEngine, zero_engine
from .folder import RunFolder
from .health import HealthMonitor
from .metrics import progress_bar
from .optim import build_optimizer, total_steps
from .reference import ReferenceService, reference_precision
from .strategy import (
    check_launch,
    check_strategy,
    make_accelerator,
    shard_settings,
    warn_batch_level,
)


def autocast(device_type: str, precision: str):
    """Autocast of the forwards in ``precision`` (fp32, bf16, fp16); off in fp32. Losses,
    reductions and log-prob sums stay fp32."""
    return torch.autocast(device_type, dtype=DTYPES[precision], enabled=precision != "fp32")


@dataclass
class LoopParts:
    """What the loop runs with, each built from its own section: ``folder`` (ownership,
    lock; checked usable before any compute), ``hardware`` (device and precision, resolved
    once), ``accelerator`` (processes: ``world``, ``rank``), ``stop`` (SIGINT / SIGTERM),
    ``engine`` (backward, step, optimizer state) and its ``scheduler``, ``reference`` (the
    reference's scores: precomputed, cached, live or synced), ``checkpoints``, ``health``
    (the live checks) and ``total_steps``."""

    folder: RunFolder
    hardware: HardwareChoice
    accelerator: Any
    stop: StopRequests
    engine: TorchEngine | ZeroEngine
    scheduler: Any
    reference: ReferenceService
    checkpoints: CheckpointStore
    health: HealthMonitor
    total_steps: int

    @property
    def precision(self) -> str:  # fp32 | bf16 | fp16
        return self.hardware.precision

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index


def build_parts(cfg: TrainConfig, policy: Policy, objective: Objective, source: DataSource,
                *, accelerator: Any = None, trackers: tuple[Any, ...] = (),
                log: Callable[[str], None] = print,
                hardware: HardwareChoice | None = None) -> LoopParts:
    """The parts of ``cfg``'s loop for ``policy`` (sharded or prepared here), ``objective``
    (given the processes' ``reduce_sum``: its batch statistics are pooled) and ``source``
    (sharded over the processes). ``hardware``: the run builder's resolve, reused."""
    optim, run, dist = cfg.optim, cfg.run, cfg.distributed
    folder = RunFolder(run.output_dir, log=log)
    folder.check_usable()  # before any compute
    # the device and precision the hardware does natively; the loop applies its own autocast
    # (accelerate's per-process state refuses a second mixed_precision)
    hardware = hardware or resolve(optim.mixed_precision, run.device, run.host_memory)
    accelerator = accelerator or make_accelerator([*run.log_with, *trackers], run.output_dir,
                                                  hardware.device.kind)
    check_launch(accelerator, dist.strategy)
    world, rank = accelerator.num_processes, accelerator.process_index
    folder.is_main = accelerator.is_main_process
    source.shard(world, rank)
    if world > 1:  # batch statistics (KTO's KL estimate, BCO's δ) pooled over processes
        objective.reduce_sum = lambda t: accelerator.reduce(t, "sum")
    warn_batch_level(objective, optim.grad_accum_steps, optim.batch_size, world)
    steps = total_steps(optim, source.steps_per_epoch)
    torch.manual_seed(optim.seed)
    random.seed(optim.seed)
    check_strategy(dist.strategy, hardware.precision, hardware.reason, policy)
    engine: TorchEngine | ZeroEngine
    if dist.strategy == "deepspeed":
        engine, scheduler = zero_engine(policy, accelerator, optim, dist, steps)
    else:  # FSDP2 replaces the parameters: the optimizer comes after
        modules = (policy.shard(shard_settings(accelerator, dist, hardware.precision == "bf16"))
                   if dist.strategy == "fsdp" else policy.prepare(accelerator))
        optimizer, scheduler = build_optimizer(policy.trainable_parameters(), optim, steps)
        engine = TorchEngine(accelerator, optimizer, dist.strategy, modules,
                             loss_scaling=hardware.precision == "fp16")
    precision = reference_precision(cfg.loss.ref_precision, hardware.precision)
    enabled = run.progress_bar and accelerator.is_main_process
    reference = ReferenceService(
        policy, objective, cfg.loss, accelerator,
        lambda: autocast(accelerator.device.type, precision), precision, log,
        lambda desc, total=None: progress_bar(enabled, desc, total, 0))
    checkpoints = CheckpointStore(run.output_dir, run.keep_checkpoints,
                                  accelerator.is_main_process, accelerator.wait_for_everyone)
    return LoopParts(folder, hardware, accelerator, StopRequests(log), engine, scheduler,
                     reference, checkpoints, HealthMonitor(log, objective.name), steps)


__all__ = ["LoopParts", "autocast", "build_parts"]
