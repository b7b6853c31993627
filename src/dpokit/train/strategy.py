"""Launch and strategy: one accelerate ``Accelerator`` per run, checked against the launcher.

On a machine without a GPU, several processes (torchrun, accelerate launch) need the CPU
backend asked for explicitly, or accelerate leaves each process training alone on all the
data. A sharding engine this loop does not drive yet is refused.

    >>> launcher_world_size()
    1
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch


def launcher_world_size() -> int:
    """Processes the launcher (torchrun, accelerate launch) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_without_accelerator() -> bool:
    """Several processes on a machine with no GPU (accelerate must then be told: cpu=True)."""
    xpu = getattr(torch, "xpu", None)
    has_accelerator = torch.cuda.is_available() or (xpu is not None and xpu.is_available())
    return launcher_world_size() > 1 and not has_accelerator


def make_accelerator(log_with: list[Any] | None = None, project_dir: str | None = None):
    """An Accelerator for this launch, with the given trackers (names or tracker objects);
    named trackers whose package is not installed are left out."""
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    trackers = [t for t in log_with or [] if isinstance(t, GeneralTracker) or t in available]
    return Accelerator(cpu=launched_without_accelerator(), log_with=trackers or None,
                       project_dir=project_dir)


def check_launch(accelerator: Any, strategy: str = "ddp") -> None:
    """Refuse what would silently train wrong: a process count that does not match the
    launcher's, or a sharding engine this loop does not drive (its optimizer is built on the
    unwrapped parameters, and checkpoints save whole tensors)."""
    launched = launcher_world_size()
    if accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes (WORLD_SIZE) but accelerate runs "
                           f"{accelerator.num_processes}: each process would train alone on all "
                           f"the data. Launch with torchrun or `accelerate launch` on a machine "
                           f"whose devices accelerate sees, or pass an Accelerator that matches.")
    engine = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if engine in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise NotImplementedError(f"distributed type {engine} is not supported yet: dpokit trains "
                                  f"data-parallel (strategy={strategy}), one process per device, "
                                  f"on one or more machines. Launch without the {engine} plugin.")


def warn_batch_level(objective: Any, grad_accum_steps: int, batch_size: int, world: int) -> None:
    """A batch-level loss takes its statistics per micro-batch, per process: say so once."""
    if not objective.batch_level:
        return
    split = world > 1 and not objective.pools_batch_stats
    if grad_accum_steps > 1 or split:
        what = " and ".join(([f"{grad_accum_steps} accumulated micro-batches"]
                             if grad_accum_steps > 1 else [])
                            + ([f"{world} processes"] if split else []))
        warnings.warn(f"loss {objective.name!r} is batch-level (it sorts or averages over the "
                      f"batch): with {what} its batch statistics are taken per micro-batch of "
                      f"{batch_size}, not over the whole step, so the update differs from one "
                      f"big batch", stacklevel=3)
