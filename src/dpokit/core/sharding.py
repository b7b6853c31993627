"""Whole tensors and shards: what checkpoints need to be independent of the process count.

A sharded (FSDP2) parameter is a ``DTensor``; a DeepSpeed ZeRO-3 parameter keeps only its
partition (``ds_id`` marks it). ``whole`` gathers either (a collective: every process calls
it), ``assign`` writes a whole tensor into a parameter however it is laid out (ZeRO: the
fp32 master copy in the optimizer too), ``like`` cuts a whole tensor to a DTensor's shard.
Plain tensors pass through all three. DeepSpeed is imported only for its own parameters.

    >>> whole(torch.ones(2)).tolist()
    [1.0, 1.0]
    >>> p = torch.nn.Parameter(torch.zeros(2)); assign(p, torch.ones(2)); p.tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def _zero3(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "ds_id")  # a ZeRO-3 parameter (its data is this process's part)


def _zero(tensor: torch.Tensor) -> bool:
    """A parameter DeepSpeed ZeRO manages (stage 3 weights, or a stage 1/2 master copy)."""
    return _zero3(tensor) or hasattr(tensor, "_hp_mapping")


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor as a whole: a sharded DTensor or ZeRO-3 parameter gathered from every
    process (collective); detached for ZeRO-3."""
    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    if _zero3(tensor):
        from deepspeed.runtime.zero import GatheredParameters

        with GatheredParameters([tensor]):
            return tensor.data.detach().clone()
    return tensor


def like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as ``param`` is: this process's shard of a DTensor."""
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh,
                                 param.placements)
    return value.to(param.device)


@torch.no_grad()
def assign(param: torch.Tensor, value: torch.Tensor) -> None:
    """``param <- value`` (a whole tensor), for a plain, FSDP2 or ZeRO parameter; ZeRO's fp32
    master copy is set too, or its next step would write the old weights back
    (collective for sharded parameters)."""
    if not _zero(param):
        param.copy_(like(param, value))
        return
    from deepspeed.runtime.zero import GatheredParameters
    from deepspeed.utils import safe_set_full_fp32_param

    with GatheredParameters([param], modifier_rank=0):  # stage 1/2: a no-op context
        param.data.copy_(value.to(param.device, param.dtype))
    safe_set_full_fp32_param(param, value.to(param.device, torch.float32))


def whole_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every sharded tensor gathered, on the CPU (collective)."""
    return {k: whole(v).detach().cpu() for k, v in module.state_dict(keep_vars=True).items()}
