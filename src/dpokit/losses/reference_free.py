"""Preference losses that need no reference model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.types import NON_NEGATIVE, Domain, LossOutput
from .registry import LossParam, LossParams, declare_param, register_loss

SIMPO_GAMMA = declare_param(LossParam(
    "simpo_gamma", 0.5, "SimPO target reward margin γ (not γ/β)", NON_NEGATIVE))
NLL_WEIGHT = declare_param(LossParam(
    "nll_weight", 1.0, "weight of the chosen NLL term (cpo, orpo)", NON_NEGATIVE))


@register_loss("simpo", params=(SIMPO_GAMMA,), needs_reference=False, length_normalized=True,
               paper="Meng et al. 2024, SimPO",
               formula="-log σ(β·(avg log π(y_w) - avg log π(y_l)) - γ)")
def simpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """SimPO on per-token average log-probs; rewards are ``beta * avg log pi``."""
    margin = params.beta * (chosen - rejected) - params.simpo_gamma  # (B,)
    losses = -F.logsigmoid(margin)  # SimPO, Meng et al. 2024, Eq. 6
    return LossOutput(losses, (params.beta * chosen).detach(), (params.beta * rejected).detach())


def _chosen_nll(chosen, extras, length_normalized: bool):
    """Per-pair NLL of the chosen completion, averaged over its tokens: (B,)."""
    if length_normalized:
        return -chosen
    return -chosen / extras["chosen_tokens"].clamp(min=1)


@register_loss("cpo", params=(NLL_WEIGHT,), needs_reference=False,
               paper="Xu et al. 2024, Contrastive Preference Optimization (CPO)",
               formula="-log σ(β·(log π(y_w) - log π(y_l))) + λ·NLL(y_w)")
def cpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """CPO: reference-free DPO plus a behaviour-cloning NLL on the chosen (weight
    ``nll_weight``)."""
    preference = -F.logsigmoid(params.beta * (chosen - rejected))  # (B,)
    # CPO objective, Xu et al. 2024: L_prefer + L_NLL
    losses = preference + params.nll_weight * _chosen_nll(chosen, extras, False)
    return LossOutput(losses, (params.beta * chosen).detach(), (params.beta * rejected).detach())


@register_loss(
    "orpo",
    params=(NLL_WEIGHT,),
    needs_reference=False,
    length_normalized=True,
    paper="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model",
    formula="NLL(y_w) - β·log σ(log odds(y_w) - log odds(y_l)), odds = p/(1-p)",
)
def orpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """ORPO on per-token average log-probs; ``beta`` is the paper's λ (odds-ratio weight)."""
    # log odds(y) = log p - log(1 - p), with p = exp(avg log-prob) < 1
    log_odds = (chosen - rejected) - (
        torch.log(-torch.expm1(chosen)) - torch.log(-torch.expm1(rejected))
    )
    odds_ratio_loss = -F.logsigmoid(log_odds)  # (B,) L_OR, Hong et al. 2024
    losses = params.nll_weight * _chosen_nll(chosen, extras, True) + params.beta * odds_ratio_loss
    return LossOutput(losses, (params.beta * chosen).detach(), (params.beta * rejected).detach())


@register_loss(
    "sft",
    needs_reference=False,
    paper="supervised fine-tuning on the chosen completions",
    formula="NLL(y_w), averaged over its tokens",
)
def sft_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """Per-token NLL of the chosen completion; mix it with a preference loss for RPO-style runs."""
    losses = _chosen_nll(chosen, extras, False)
    zero = torch.zeros_like(losses).detach()
    return LossOutput(losses, zero, zero)


@register_loss("simper", needs_reference=False, length_normalized=True,
               paper="Xiao et al. 2025, SimPER: A Minimalist Approach to Preference Alignment "
                     "without Hyperparameters",
               formula="-exp(avg log π(y_w)) + exp(avg log π(y_l))  (inverse perplexities)")
def simper_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """SimPER on per-token average log-probs: raise the chosen answer's inverse perplexity,
    lower the rejected one's; no hyper-parameter (``beta`` is not read). Rewards: the inverse
    perplexities."""
    chosen_ipp, rejected_ipp = chosen.exp(), rejected.exp()  # (B,) inverse perplexities
    losses = -chosen_ipp + rejected_ipp  # the SimPER objective of Xiao et al. 2025
    return LossOutput(losses, chosen_ipp.detach(), rejected_ipp.detach())


ALPHAPO_ALPHA = LossParam("alphapo_alpha", 0.25, "AlphaPO: the reward's shape α (α → 0 is "
                          "SimPO's log-likelihood reward)", Domain())


@register_loss("alphapo", params=(SIMPO_GAMMA, ALPHAPO_ALPHA), needs_reference=False,
               length_normalized=True,
               paper="Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM Alignment",
               formula="-log σ(r_α(y_w) - r_α(y_l) - γ), r_α = (β/α)·(1 - exp(-α·avg log π))")
def alphapo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """AlphaPO on per-token average log-probs: SimPO with the reward reshaped by α (α = 0
    gives SimPO exactly; α > 0 bends the reward so that likelihood displacement costs more)."""
    alpha, beta = params.alphapo_alpha, params.beta

    def reward(avg: torch.Tensor) -> torch.Tensor:  # (B,)
        if alpha == 0:
            return beta * avg
        return beta / alpha * -torch.expm1(-alpha * avg)  # AlphaPO's reward (Gupta et al.)

    chosen_reward, rejected_reward = reward(chosen), reward(rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward - params.simpo_gamma)
    return LossOutput(losses, chosen_reward.detach(), rejected_reward.detach())
