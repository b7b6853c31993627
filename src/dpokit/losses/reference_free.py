"""Preference losses that need no reference model."""

from __future__ import annotations

import torch.nn.functional as F

from .registry import LossOutput, LossParams, register_loss


@register_loss("simpo", needs_reference=False, length_normalized=True,
               paper="Meng et al. 2024, SimPO",
               formula="-log σ(β·(avg log π(y_w) - avg log π(y_l)) - γ)")
def simpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """SimPO on per-token average log-probs; rewards are ``beta * avg log pi``."""
    margin = params.beta * (chosen - rejected) - params.simpo_gamma  # (B,)
    losses = -F.logsigmoid(margin)  # SimPO, Meng et al. 2024, Eq. 6
    return LossOutput(losses, (params.beta * chosen).detach(), (params.beta * rejected).detach())
