"""Unpaired losses: rows are (prompt, completion, label), no chosen/rejected pairing.

Layout, per row: ``chosen`` = log π(y|x) of the row's completion, ``rejected`` = log π(y'|x) of
a mismatched completion y' (another row's; the KL sample), ``extras["label"]`` = 1 for a
desirable completion, 0 for an undesirable one.
"""

from __future__ import annotations

import torch

from ..core.types import POSITIVE, LossOutput
from .registry import LossParam, LossParams, Statistic, declare_param, register_loss

KTO_DESIRABLE_WEIGHT = declare_param(LossParam(
    "kto_desirable_weight", 1.0, "KTO λ_D, weight of desirable rows", POSITIVE))
KTO_UNDESIRABLE_WEIGHT = declare_param(LossParam(
    "kto_undesirable_weight", 1.0, "KTO λ_U, weight of undesirable rows", POSITIVE))


def _kl_sample_log_ratios(chosen, rejected, ref_chosen, ref_rejected, params):
    return rejected - ref_rejected  # (B,) log-ratios of the mismatched (KL) completions


@register_loss(
    "kto",
    params=(KTO_DESIRABLE_WEIGHT, KTO_UNDESIRABLE_WEIGHT),
    needs_reference=True,
    unpaired=True,
    batch_level=True,
    statistic=Statistic("kto_kl", _kl_sample_log_ratios),
    paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization",
    formula="λ_D(1 - σ(β(r - z0))) if desirable, λ_U(1 - σ(β(z0 - r))) if not",
)
def kto_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """KTO. r = log-ratio of the completion; z0 = max(0, mean log-ratio of the mismatched
    completions), the batch estimate of KL(π || π_ref), detached. The mean is
    ``extras["kto_kl"]`` when given (pooled over processes by the objective)."""
    ratio = chosen - ref_chosen  # (B,) r_θ(x, y)
    kl = (extras or {}).get("kto_kl")
    if kl is None:
        kl = _kl_sample_log_ratios(chosen, rejected, ref_chosen, ref_rejected, params).mean()
    z0 = kl.clamp(min=0).detach()  # scalar: KTO's z0 = max(0, KL estimate from mismatched pairs)
    desirable = extras["label"] > 0.5  # (B,)
    # KTO value function, Ethayarajh et al. 2024: v = λ_D σ(β(r - z0)) or λ_U σ(β(z0 - r))
    losses = torch.where(
        desirable,
        params.kto_desirable_weight * (1 - torch.sigmoid(params.beta * (ratio - z0))),
        params.kto_undesirable_weight * (1 - torch.sigmoid(params.beta * (z0 - ratio))),
    )
    reward = (params.beta * ratio).detach()
    baseline = (params.beta * z0).expand_as(reward)
    return LossOutput(
        losses, torch.where(desirable, reward, baseline), torch.where(desirable, baseline, reward)
    )


@register_loss(
    "apo_zero_unpaired",
    needs_reference=True,
    unpaired=True,
    paper="D'Oosterlinck et al. 2024, APO-zero for unpaired data",
    formula="1 - σ(β·r) if desirable, σ(β·r) if not",
)
def apo_zero_unpaired_loss(
    chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None
):
    """APO-zero with labels: push desirable completions up and undesirable ones down."""
    ratio = chosen - ref_chosen  # (B,)
    desirable = extras["label"] > 0.5
    # APO-zero (unpaired), D'Oosterlinck et al. 2024
    losses = torch.where(
        desirable, 1 - torch.sigmoid(params.beta * ratio), torch.sigmoid(params.beta * ratio)
    )
    reward = (params.beta * ratio).detach()
    zero = torch.zeros_like(reward)
    return LossOutput(
        losses, torch.where(desirable, reward, zero), torch.where(desirable, zero, reward)
    )
