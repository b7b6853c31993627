"""Launch and strategy: one accelerate ``Accelerator`` per run, checked against the launcher.

On a machine without a GPU, several processes (torchrun, accelerate launch) need the CPU
backend asked for explicitly, or accelerate leaves each process training alone on all the
data. An accelerate sharding plugin is refused unless the strategy names it (dpokit applies
FSDP2 and DeepSpeed ZeRO itself, ``engines.py``).

    >>> launcher_world_size()
    1
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from ..core.protocols import ShardSettings


def launcher_world_size() -> int:
    """Processes the launcher (torchrun, accelerate launch) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_without_accelerator() -> bool:
    """Several processes on a machine with no GPU (accelerate must then be told: cpu=True)."""
    xpu = getattr(torch, "xpu", None)
    has_accelerator = torch.cuda.is_available() or (xpu is not None and xpu.is_available())
    return launcher_world_size() > 1 and not has_accelerator


def make_accelerator(log_with: list[Any] | None = None, project_dir: str | None = None,
                     device: str = "auto"):
    """An Accelerator for this launch on ``device`` (cpu forces the CPU; cuda / mps / auto
    take what accelerate finds), with the given trackers (names or tracker objects); named
    trackers whose package is not installed are left out."""
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    trackers = [t for t in log_with or [] if isinstance(t, GeneralTracker) or t in available]
    return Accelerator(cpu=device == "cpu" or launched_without_accelerator(),
                       log_with=trackers or None,
                       project_dir=project_dir)


def check_launch(accelerator: Any, strategy: str = "ddp") -> None:
    """Refuse what would silently train wrong: a process count that does not match the
    launcher's, or an accelerate sharding plugin (dpokit applies FSDP2 itself with
    ``strategy=fsdp``; accelerate's plugin would wrap the model a second way)."""
    launched = launcher_world_size()
    if accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes (WORLD_SIZE) but accelerate runs "
                           f"{accelerator.num_processes}: each process would train alone on all "
                           f"the data. Launch with torchrun or `accelerate launch` on a machine "
                           f"whose devices accelerate sees, or pass an Accelerator that matches.")
    engine = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if engine == "DEEPSPEED" and strategy == "deepspeed":
        return  # accelerate launched with its DeepSpeed config: dpokit drives the engine
    if engine in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise NotImplementedError(f"distributed type {engine} (an accelerate plugin) is not "
                                  f"supported with distributed.strategy={strategy}: dpokit "
                                  f"shards with PyTorch FSDP2 (strategy=fsdp) or DeepSpeed ZeRO "
                                  f"(strategy=deepspeed) itself. Set the strategy, or launch "
                                  f"without the {engine} plugin.")


def check_strategy(strategy: str, precision: str, reason: str, policy: Any) -> None:
    """Refuse a strategy the run cannot train with: fp16's loss scaling off ddp (``reason``:
    why fp16 was chosen), sharding a policy that does not declare the capability."""
    if precision == "fp16" and strategy != "ddp":
        raise ValueError(f"mixed_precision=fp16 (chosen: {reason}) with strategy={strategy}: "
                         f"dpokit's loss scaling runs with ddp only; set mixed_precision=fp32 "
                         f"(or bf16 on a GPU with bf16 units)")
    if strategy != "ddp" and not policy.capabilities.sharding:
        raise ValueError(f"strategy={strategy}: {type(policy).__name__} does not declare the "
                         f"capability 'sharding'")


def ensure_process_group(device: str) -> None:
    """One process without a launcher: a process group of one (the sharding engines need
    one); gloo on CPU, nccl on GPU."""
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("LOCAL_RANK", "0")  # (DeepSpeed reads it)
    dist.init_process_group("nccl" if device == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def zero_settings(accelerator: Any, config: dict[str, Any],
                  wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> ShardSettings:
    """DeepSpeed ZeRO settings: the config (for the policy's reference) and ``wrap``, which
    puts the policy's root module into the loop's engine."""
    ensure_process_group(accelerator.device.type)
    return ShardSettings(engine="zero", zero_config=config, wrap=wrap)


def shard_settings(accelerator: Any, distributed: Any, bf16: bool) -> ShardSettings:
    """FSDP2 settings over a 1-D mesh of every process (gloo on CPU, nccl on GPU)."""
    from torch.distributed.device_mesh import init_device_mesh

    device = accelerator.device.type
    ensure_process_group(device)
    mesh = init_device_mesh(device, (accelerator.num_processes,))
    return ShardSettings(mesh, bf16=bf16, cpu_offload=distributed.fsdp_cpu_offload,
                         reshard_after_forward=distributed.fsdp_reshard_after_forward)


@contextmanager
def gradient_sync_paused(accelerator: Any, module: Any, strategy: str):
    """Accumulate gradients locally (the next backward outside syncs them): DDP's
    ``no_sync``; an FSDP2 module's ``set_requires_gradient_sync(False)``."""
    if strategy != "fsdp":
        with accelerator.no_sync(module):
            yield
        return
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


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
