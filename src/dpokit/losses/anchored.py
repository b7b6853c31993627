"""Losses that keep DPO from pushing the chosen answer down: DPOP penalizes the chosen
log-ratio falling below 0 (the likelihood displacement `dpokit doctor` names), Cal-DPO
calibrates the implicit rewards to a fixed scale so that the chosen one must rise.

    >>> import torch
    >>> out = dpop_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-2.0]),
    ...                 torch.tensor([-2.0]), LossParams(beta=0.5, dpop_lambda=2.0))
    >>> round(out.losses.item(), 4)   # -log σ(0.5·(2 - 2·max(0, -2 - -3))) = -log σ(0)
    0.6931
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.types import NON_NEGATIVE, LossOutput
from .registry import LossParam, LossParams, register_loss

DPOP_LAMBDA = LossParam("dpop_lambda", 50.0, "DPOP: weight of the penalty on the chosen "
                        "log-prob falling below the reference's (the paper's λ = 50)",
                        NON_NEGATIVE)


@register_loss("dpop", params=(DPOP_LAMBDA,), needs_reference=True,
               paper="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference "
                     "Optimisation with DPO-Positive (DPOP)",
               formula="-log σ(β·(h - λ·max(0, log π_ref(y_w) - log π(y_w))))")
def dpop_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """DPO-Positive: DPO's margin minus ``dpop_lambda`` times how far the chosen log-prob fell
    below the reference's (0 while it does not)."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected  # (B,)
    penalty = torch.clamp(ref_chosen - chosen, min=0)  # (B,) max(0, log π_ref(y_w) - log π(y_w))
    h = chosen_ratio - rejected_ratio - params.dpop_lambda * penalty  # (B,)
    losses = -F.logsigmoid(params.beta * h)  # the DPOP objective of Pal et al. 2024
    return LossOutput(losses, (params.beta * chosen_ratio).detach(),
                      (params.beta * rejected_ratio).detach())


@register_loss("cal_dpo", needs_reference=True,
               paper="Xiao et al. 2024, Cal-DPO: Calibrated Direct Preference Optimization",
               formula="-log σ(h) + (r_w - 1/(2β))² + (r_l + 1/(2β))², r = log π - log π_ref")
def cal_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """Cal-DPO: the contrastive term on the unscaled log-ratios r, and each log-ratio pulled to
    ``±1/(2β)`` (the calibration), so the chosen one has to rise, not only the margin."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected  # (B,)
    target = 1.0 / (2.0 * params.beta)
    losses = (-F.logsigmoid(chosen_ratio - rejected_ratio)  # the Cal-DPO objective (Xiao et al.)
              + (chosen_ratio - target).pow(2) + (rejected_ratio + target).pow(2))
    return LossOutput(losses, (params.beta * chosen_ratio).detach(),
                      (params.beta * rejected_ratio).detach())
