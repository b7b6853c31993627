"""Whole tensors and shards: what checkpoints need to be independent of the process count.

A sharded (FSDP2) parameter is a ``DTensor``; ``whole`` gathers it (a collective: every
process calls it), ``like`` cuts a whole tensor back into this process's shard. Plain tensors
pass through both.

    >>> whole(torch.ones(2)).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor as a whole: a sharded DTensor gathered from every process (collective)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as ``param`` is: this process's shard of a DTensor."""
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh,
                                 param.placements)
    return value.to(param.device)
