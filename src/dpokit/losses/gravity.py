"""Gravity-Weighted DPO (Bolliger and Jaeger 2026): the DPO signal of an instruction-hierarchy
conflict scaled by how far apart the two conflicting privilege levels are.

The paper's exact formulas are not public; these are the documented schedules, stated here.
Levels run 0 (most privileged: platform) to k-1 (least: retrieved content). A pair obeys
level i (chosen) against level j (rejected, the overridden instruction), i < j; non-conflict
pairs (benign, aligned) have i = j. With the gap ``g = (j - i) / (k - 1)`` in [0, 1] and the
overridden level's privilege ``p = (k - 1 - j) / (k - 1)`` in [0, 1]:

- linear:    ``s = g``
- bilateral: ``s = g * (1 + eta * p)`` (overriding a privileged level weighs more)

and the loss is ODPO-style with an offset and a weight from ``s``:
``-(1 + gw_weight * s) * log σ(β·h - gw_offset * s)``, h = the log-ratio margin. A schedule is
a function a user can replace: :func:`register_gravity_schedule` registers ``gw_<name>``.

    >>> gap_and_privilege(torch.tensor([0.0]), torch.tensor([4.0]), levels=5)
    (tensor([1.]), tensor([0.]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.types import NON_NEGATIVE, Domain, LossOutput
from .registry import LossParam, LossParams, declare_param, register_loss

GW_LEVELS = declare_param(LossParam(
    "gw_levels", 5.0, "GW-DPO: privilege levels k (0 = most privileged)",
    Domain(2.0, low_inclusive=True)))
GW_OFFSET = declare_param(LossParam(
    "gw_offset", 1.0, "GW-DPO: offset inside the sigmoid per unit of gravity s", NON_NEGATIVE))
GW_WEIGHT = declare_param(LossParam(
    "gw_weight", 0.0, "GW-DPO: extra weight of the pair's loss per unit of gravity s",
    NON_NEGATIVE))
GW_ETA = declare_param(LossParam(
    "gw_eta", 1.0, "GW-DPO bilateral: how much the overridden level's privilege adds",
    NON_NEGATIVE))
COLUMNS = ("level_obeyed", "level_overridden")


@dataclass(frozen=True)
class Gravity:
    """offset (B,): subtracted inside the sigmoid; weight (B,): multiplies the pair's loss."""

    offset: torch.Tensor
    weight: torch.Tensor


Schedule = Callable[[torch.Tensor, torch.Tensor, LossParams], torch.Tensor]


def gap_and_privilege(obeyed: torch.Tensor, overridden: torch.Tensor, levels: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) levels -> the normalized gap g and the overridden level's privilege p."""
    span = levels - 1
    if bool((obeyed > overridden).any()) or bool((overridden > span).any()):
        raise ValueError(f"levels must satisfy 0 <= obeyed <= overridden <= {span:g}")
    return (overridden - obeyed) / span, (span - overridden) / span


def linear_schedule(gap: torch.Tensor, privilege: torch.Tensor, params: LossParams
                    ) -> torch.Tensor:
    """s = g."""
    return gap


def bilateral_schedule(gap: torch.Tensor, privilege: torch.Tensor, params: LossParams
                       ) -> torch.Tensor:
    """s = g * (1 + eta * p)."""
    return gap * (1 + params.gw_eta * privilege)


def gravity(extras: dict[str, torch.Tensor], params: LossParams, schedule: Schedule) -> Gravity:
    obeyed = extras["level_obeyed"].float()  # (B,)
    overridden = extras["level_overridden"].float()  # (B,)
    gap, privilege = gap_and_privilege(obeyed, overridden, params.gw_levels)
    s = schedule(gap, privilege, params)  # (B,)
    return Gravity(params.gw_offset * s, 1 + params.gw_weight * s)


def register_gravity_schedule(name: str, schedule: Schedule, formula: str) -> None:
    """Register the loss ``gw_<name>``: gravity-weighted DPO with ``schedule(g, p, params) ->
    s``; ``formula`` documents ``s`` (the losses table shows it)."""

    @register_loss(
        f"gw_{name}", needs_reference=True, extra_columns=COLUMNS,
        params=(GW_LEVELS, GW_OFFSET, GW_WEIGHT, GW_ETA),
        paper="Bolliger and Jaeger 2026, Gravity-Weighted DPO (schedules as stated in dpokit)",
        formula=f"-(1 + w·s)·log σ(β·h - o·s), {formula}")
    def gravity_weighted(chosen, rejected, ref_chosen, ref_rejected, params: LossParams,
                         extras=None):
        chosen_ratio = chosen - ref_chosen  # (B,)
        rejected_ratio = rejected - ref_rejected  # (B,)
        g = gravity(extras, params, schedule)
        h = chosen_ratio - rejected_ratio  # (B,)
        # GW-DPO: -(1 + w s) log σ(β h - o s), ODPO's offset form (Amini et al. 2024)
        losses = -g.weight.to(h.dtype) * F.logsigmoid(params.beta * h - g.offset.to(h.dtype))
        return LossOutput(losses, (params.beta * chosen_ratio).detach(),
                          (params.beta * rejected_ratio).detach())

    gravity_weighted.__doc__ = f"Gravity-weighted DPO, schedule {name}: {schedule.__doc__}"


register_gravity_schedule("linear", linear_schedule, "s = g (the level gap)")
register_gravity_schedule("bilateral", bilateral_schedule,
                          "s = g·(1 + η·p), p = the overridden level's privilege")
