"""Paired preference losses that compare against a reference policy.

Notation, per pair: ``h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))``,
the difference of the chosen and rejected log-ratios; rewards are ``beta * log-ratio``
(Rafailov et al. 2023, Eq. 5), always detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import LossOutput, LossParams, register_loss


def _log_ratios(chosen, rejected, ref_chosen, ref_rejected):
    chosen_ratio = chosen - ref_chosen  # (B,)
    rejected_ratio = rejected - ref_rejected  # (B,)
    return chosen_ratio, rejected_ratio


def _rewards(beta: float, chosen_ratio, rejected_ratio) -> tuple[torch.Tensor, torch.Tensor]:
    return (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


@register_loss("sigmoid", needs_reference=True, aliases=("dpo",),
               paper="Rafailov et al. 2023, DPO", formula="-log σ(β·h)")
def sigmoid_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """DPO. h=1, beta=1: loss = -log σ(1) = 0.3133."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    h = chosen_ratio - rejected_ratio  # (B,)
    losses = -F.logsigmoid(params.beta * h)  # DPO, Rafailov et al. 2023, Eq. 7
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss("cdpo", needs_reference=True,
               paper="Mitchell 2023, A note on DPO with noisy preferences",
               formula="-(1-ε)·log σ(β·h) - ε·log σ(-β·h)")
def cdpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """Conservative DPO: targets a preference probability of 1-ε instead of 1."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    z = params.beta * (chosen_ratio - rejected_ratio)  # (B,)
    eps = params.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)  # cDPO (Mitchell 2023)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss("robust", needs_reference=True,
               paper="Chowdhury et al. 2024, Provably Robust DPO",
               formula="[-(1-ε)·log σ(β·h) + ε·log σ(-β·h)] / (1-2ε)")
def robust_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """rDPO: an unbiased estimate of the clean DPO loss when labels flip with probability ε."""
    eps = params.label_smoothing
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"robust needs 0 <= label_smoothing < 0.5, got {eps}")
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    z = params.beta * (chosen_ratio - rejected_ratio)  # (B,)
    # rDPO loss, Chowdhury et al. 2024, Sec. 3 (de-biased BCE under flip rate ε)
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


def _ipo(chosen, rejected, ref_chosen, ref_rejected, params: LossParams) -> LossOutput:
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    h = chosen_ratio - rejected_ratio  # (B,)
    losses = (h - 1 / (2 * params.beta)) ** 2  # IPO, Azar et al. 2023, Eq. 17 (tau = beta)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss("ipo", needs_reference=True, paper="Azar et al. 2023, IPO",
               formula="(h - 1/(2β))², log-ratios summed over tokens")
def ipo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """IPO as in the paper: sequence log-ratios summed over tokens."""
    return _ipo(chosen, rejected, ref_chosen, ref_rejected, params)


@register_loss("ipo_norm", needs_reference=True, length_normalized=True,
               paper="Azar et al. 2023, IPO (length-averaged, as TRL computes it)",
               formula="(h - 1/(2β))², log-ratios averaged per token")
def ipo_norm_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """IPO on per-token average log-probs (TRL's ``ipo``)."""
    return _ipo(chosen, rejected, ref_chosen, ref_rejected, params)


@register_loss("hinge", needs_reference=True,
               paper="Zhao et al. 2023 (SLiC-HF); Liu et al. 2024 (RSO) with a reference",
               formula="max(0, 1 - β·h)")
def hinge_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """SLiC hinge on the reference-normalized margin."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    h = chosen_ratio - rejected_ratio  # (B,)
    losses = torch.relu(1 - params.beta * h)  # SLiC hinge with reference normalization: RSO (Liu et al. 2024), "hinge-norm" loss
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))
