"""Optimizer and learning-rate schedule (AdamW; linear / cosine / constant after warmup).

    >>> f = lr_factor(total_steps=10, warmup=2, schedule="linear")
    >>> [round(f(s), 3) for s in (0, 1, 2, 6, 10)]
    [0.333, 0.667, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def lr_factor(total_steps: int, warmup: int, schedule: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


def total_steps(optim: Any, steps_per_epoch: int | None) -> int:
    """``optim.max_steps``, else ``num_epochs`` of the source's epochs (an online source has
    none: then ``max_steps`` is required)."""
    if optim.max_steps:
        return optim.max_steps
    if steps_per_epoch is None:
        raise ValueError("this data source has no epochs (online): set max_steps")
    return max(1, math.ceil(optim.num_epochs * steps_per_epoch))


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel is used here


def fusable(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW can step ``params``: plain floating-point tensors on a CPU
    or CUDA device (not FSDP2's sharded DTensors)."""
    return all(type(p.data) is torch.Tensor and p.dtype.is_floating_point
               and p.device.type in FUSED_DEVICES for p in params)


def build_optimizer(params: list[torch.nn.Parameter], optim: Any, total_steps: int,
                    allow_fused: bool = True) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over ``params`` and its LambdaLR schedule, from the config's optim section: the
    fused kernel (one pass over each tensor, as TRL's default ``adamw_torch_fused``) where
    ``optim.adamw_fused`` asks for it and the parameters allow it (``allow_fused``: False
    under DeepSpeed, which steps its own flattened partitions), else torch's per-tensor loop,
    its plain twin (tests compare the two)."""
    params = list(params)
    fused = optim.adamw_fused and allow_fused and fusable(params)
    optimizer = torch.optim.AdamW(params, lr=optim.learning_rate, betas=tuple(optim.adam_betas),
                                  weight_decay=optim.weight_decay, fused=fused or None)
    warmup = optim.warmup_steps or int(optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(total_steps, warmup, optim.lr_scheduler))
    return optimizer, scheduler
