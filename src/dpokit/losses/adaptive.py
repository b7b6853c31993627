"""β-DPO (Wu et al. 2024): β set per batch from how far the batch's reward discrepancy is from
its moving average, and the pairs furthest from that average dropped by a Gaussian filter.

The objective tracks M0 and σ (``Statistic(..., "ema")``: moving averages with momentum 0.9
of the batch mean and standard deviation of h, updated before use) and hands them in
``extras``; alone, the loss takes them over its own batch. With ``beta_dpo_rho=0`` nothing is
dropped and the loss is DPO at β·(1 + a·(mean h - M0)):

    >>> import torch
    >>> extras = {"beta_dpo_gap": torch.tensor(0.5), "beta_dpo_gap_std": torch.tensor(1.0)}
    >>> out = beta_dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0]),
    ...                     torch.zeros(2), torch.zeros(2),
    ...                     LossParams(beta=0.1, beta_dpo_a=1.0, beta_dpo_rho=0.0), extras)
    >>> [round(v, 4) for v in out.losses.tolist()]   # β = 0.1·(1 + (0.5 - 0.5)), h = 1, 0
    [0.6444, 0.6931]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.catalogue import Metric, declare
from ..core.types import NON_NEGATIVE, Domain, LossOutput
from .registry import LossParam, LossParams, Statistic, register_loss

BETA_DPO_A = LossParam("beta_dpo_a", 0.6, "β-DPO: how strongly β follows the batch's reward "
                       "discrepancy (the paper's α; 0 keeps β fixed)", NON_NEGATIVE)
BETA_DPO_RHO = LossParam("beta_dpo_rho", 0.2, "β-DPO: share of each batch's pairs the "
                         "Gaussian filter drops (ρ)", Domain(0.0, 1.0, low_inclusive=True))
MIN_BETA = 1e-3  # the official code's floor on the batch's β


def _gaps(chosen, rejected, ref_chosen, ref_rejected, params):
    return ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()  # (B,) h, unscaled


@register_loss("beta_dpo", params=(BETA_DPO_A, BETA_DPO_RHO), needs_reference=True,
               batch_level=True, stochastic=True,
               statistic=Statistic("beta_dpo_gap", _gaps, "ema", gamma=0.9),
               paper="Wu et al. 2024, β-DPO: Direct Preference Optimization with Dynamic β",
               formula="-log σ(β_b·h) on the pairs kept by p ∝ exp(-(h-M0)²/2σ²), "
                       "β_b = β·(1 + a·(mean h - M0))")
def beta_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """β-DPO: the batch's pairs sampled without replacement with probability proportional to
    a Gaussian of their h around M0 (``1 - rho`` of them kept, the rest get loss 0 and the
    kept ones weigh ``B / kept``, so the mean is over the kept pairs), then DPO with the
    batch's β (detached). Rewards use the base β."""
    h = (chosen - ref_chosen) - (rejected - ref_rejected)  # (B,)
    gap = h.detach()
    extras = extras or {}
    m0 = extras.get("beta_dpo_gap", gap.mean())
    sigma = extras.get("beta_dpo_gap_std", gap.std() if gap.numel() > 1 else gap.new_tensor(0.0))
    n = gap.shape[0]
    kept = max(1, int(n * (1 - params.beta_dpo_rho)))
    # β-DPO's data filter (Wu et al. 2024): p(i) ∝ exp(-(h_i - M0)² / 2σ²)
    weight = torch.exp(-0.5 * ((gap - m0) / sigma.clamp(min=1e-8)).pow(2))  # (B,)
    if kept < n:
        index = torch.multinomial(weight.clamp(min=1e-12), kept, replacement=False)  # (kept,)
        mask = torch.zeros_like(gap).index_fill_(0, index, 1.0)  # (B,)
    else:
        mask = torch.ones_like(gap)
    batch_gap = (gap * mask).sum() / kept
    # β-DPO's batch β (Wu et al. 2024): β_b = β0·(1 + α·(M_b - M0)), M_b over the kept pairs
    beta = (params.beta * (1 + params.beta_dpo_a * (batch_gap - m0))).clamp(min=MIN_BETA)
    losses = -F.logsigmoid(beta * h) * mask * (n / kept)  # (B,) mean over B = mean over kept
    return LossOutput(losses, (params.beta * (chosen - ref_chosen)).detach(),
                      (params.beta * (rejected - ref_rejected)).detach())


declare(Metric("stat/beta_dpo_gap", "β-DPO: moving mean M0 of h", "{:+.4f}"),
        Metric("stat/beta_dpo_gap_std", "β-DPO: moving std σ of h", "{:.4f}"))
