"""Paired preference losses that compare against a reference policy.

Notation, per pair: ``h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))``,
the difference of the chosen and rejected log-ratios; rewards are ``beta * log-ratio``
(Rafailov et al. 2023, Eq. 5), always detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.catalogue import Metric, declare
from ..core.types import NON_NEGATIVE, POSITIVE, Domain, LossOutput
from .registry import LossParam, LossParams, Statistic, declare_param, register_loss

LABEL_SMOOTHING = declare_param(LossParam(
    "label_smoothing", 0.0, "assumed label-flip probability ε (cdpo, robust, exo_pair: 0 means "
    "1e-3, aot, aot_unpaired)", Domain(0.0, 0.5, low_inclusive=True)))
DISCOPOP_TAU = declare_param(LossParam(
    "discopop_tau", 0.05, "DiscoPOP temperature of the log-ratio modulation", POSITIVE))
RDPO_ALPHA = declare_param(LossParam(
    "rdpo_alpha", 0.01, "R-DPO length penalty per token of length difference", NON_NEGATIVE))
ODPO_ALPHA = declare_param(LossParam(
    "odpo_alpha", 1.0, "ODPO: offset = odpo_alpha * log(1 + score_chosen - score_rejected) "
    "when the data has scores instead of an offset column", NON_NEGATIVE))


def _log_ratios(chosen, rejected, ref_chosen, ref_rejected):
    chosen_ratio = chosen - ref_chosen  # (B,)
    rejected_ratio = rejected - ref_rejected  # (B,)
    return chosen_ratio, rejected_ratio


def _rewards(beta: float, chosen_ratio, rejected_ratio) -> tuple[torch.Tensor, torch.Tensor]:
    return (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def _smoothed_logistic(delta: torch.Tensor, params: LossParams) -> torch.Tensor:
    """-(1-ε)·log σ(β·δ) - ε·log σ(-β·δ), ε = ``label_smoothing``: (B,)."""
    eps = params.label_smoothing
    z = params.beta * delta  # (B,)
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)  # cDPO (Mitchell 2023)


@register_loss("sigmoid", needs_reference=True, aliases=("dpo",),
               paper="Rafailov et al. 2023, DPO", formula="-log σ(β·h)")
def sigmoid_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """DPO. h=1, beta=1: loss = -log σ(1) = 0.3133."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    h = chosen_ratio - rejected_ratio  # (B,)
    losses = -F.logsigmoid(params.beta * h)  # DPO, Rafailov et al. 2023, Eq. 7
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss("cdpo", params=(LABEL_SMOOTHING,), needs_reference=True,
               paper="Mitchell 2023, A note on DPO with noisy preferences",
               formula="-(1-ε)·log σ(β·h) - ε·log σ(-β·h)")
def cdpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """Conservative DPO: targets a preference probability of 1-ε instead of 1."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    losses = _smoothed_logistic(chosen_ratio - rejected_ratio, params)  # cDPO (Mitchell 2023)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss("robust", params=(LABEL_SMOOTHING,), needs_reference=True,
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
    # SLiC hinge with reference normalization: RSO (Liu et al. 2024), "hinge-norm" loss
    losses = torch.relu(1 - params.beta * h)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "sigmoid_norm",
    needs_reference=True,
    length_normalized=True,
    paper="Rafailov et al. 2023, DPO on per-token average log-probs",
    formula="-log σ(β·h), log-ratios averaged per token",
)
def sigmoid_norm_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """Length-normalized DPO: the trainer passes per-token averages, the formula is DPO's."""
    return sigmoid_loss(chosen, rejected, ref_chosen, ref_rejected, params)


@register_loss(
    "exo_pair",
    params=(LABEL_SMOOTHING,),
    needs_reference=True,
    paper="Ji et al. 2024, EXO (Towards Efficient Exact Optimization of LM Alignment)",
    formula="KL(σ(β·h) || target 1-ε): σ(βh)(log σ(βh) - log(1-ε)) + σ(-βh)(log σ(-βh) - log ε)",
)
def exo_pair_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """EXO for pairs: reverse KL from the model's pairwise preference to a smoothed label.
    ``label_smoothing`` is ε (0 means the paper's default 1e-3)."""
    eps = params.label_smoothing or 1e-3
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    z = params.beta * (chosen_ratio - rejected_ratio)  # (B,)
    # EXO_pref with K=2, Ji et al. 2024: sum_y p_θ(y) (log p_θ(y) - log p_target(y))
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "nca_pair",
    needs_reference=True,
    paper="Chen et al. 2024, Noise Contrastive Alignment (NCA)",
    formula="-log σ(r_w) - ½ log σ(-r_w) - ½ log σ(-r_l), r = β·log-ratio",
)
def nca_pair_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """NCA for pairs: absolute (not relative) rewards, so the chosen likelihood is not pushed
    down."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    r_w, r_l = params.beta * chosen_ratio, params.beta * rejected_ratio  # (B,)
    # NCA pairwise loss, Chen et al. 2024 (K=2 responses)
    losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return LossOutput(losses, r_w.detach(), r_l.detach())


def _bco_rewards(chosen, rejected, ref_chosen, ref_rejected, params):
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    return params.beta * torch.cat([chosen_ratio, rejected_ratio])  # (2B,) rewards


@register_loss(
    "bco_pair",
    needs_reference=True,
    batch_level=True,
    statistic=Statistic("bco_delta", _bco_rewards, "running"),
    paper="Jung et al. 2024, Binary Classifier Optimization (BCO)",
    formula="-log σ(r_w - δ) - log σ(-(r_l - δ)), δ = running mean of the rewards",
)
def bco_pair_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """BCO on pairs: each completion is classified good/bad against the reward shift δ.
    δ is ``extras["bco_delta"]``: in training, the running mean of every reward seen so far
    (the objective tracks it, as TRL's ``RunningMoments``); alone, this batch's mean."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    r_w, r_l = params.beta * chosen_ratio, params.beta * rejected_ratio  # (B,)
    delta = (extras or {}).get("bco_delta")
    if delta is None:
        delta = _bco_rewards(chosen, rejected, ref_chosen, ref_rejected, params).mean()
    delta = delta.detach()  # scalar
    # BCO binary cross-entropy with reward shift δ, Jung et al. 2024
    losses = -F.logsigmoid(r_w - delta) - F.logsigmoid(-(r_l - delta))
    return LossOutput(losses, r_w.detach(), r_l.detach())


@register_loss(
    "sppo_hard",
    needs_reference=True,
    paper="Wu et al. 2024, Self-Play Preference Optimization (SPPO), hard labels",
    formula="(u_w - 1/(2β))² + (u_l + 1/(2β))², u = log-ratio",
)
def sppo_hard_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """SPPO with win probabilities 1 (chosen) and 0 (rejected): squared targets per completion."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    half = 0.5 / params.beta
    # SPPO objective, Wu et al. 2024, with P(y_w wins) = 1, P(y_l wins) = 0
    losses = (chosen_ratio - half) ** 2 + (rejected_ratio + half) ** 2
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "aot",
    params=(LABEL_SMOOTHING,),
    needs_reference=True,
    batch_level=True,
    paper="Melnyk et al. 2024, Distributional Preference Alignment via Optimal Transport "
    "(AOT), paired",
    formula="-log σ(β·(sort(Δπ) - sort(Δref))), Δ = log π(y_w) - log π(y_l)",
)
def aot_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """AOT (paired): first-order stochastic dominance of the policy's chosen-minus-rejected
    log-prob distribution over the reference's, enforced on the sorted batch (1-D OT)."""
    policy_delta, _ = torch.sort(chosen - rejected)  # (B,) sorted
    ref_delta, _ = torch.sort(ref_chosen - ref_rejected)  # (B,) sorted
    losses = _smoothed_logistic(policy_delta - ref_delta, params)  # AOT, Melnyk et al. 2024
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "aot_unpaired",
    params=(LABEL_SMOOTHING,),
    needs_reference=True,
    batch_level=True,
    paper="Melnyk et al. 2024, AOT, unpaired",
    formula="-log σ(β·(sort(u_w) - sort(u_l))), u = log-ratio",
)
def aot_unpaired_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """AOT (unpaired): the chosen log-ratio distribution should dominate the rejected one; the
    two are sorted separately, so the pairing of the batch is not used."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    sorted_w, _ = torch.sort(chosen_ratio)  # (B,)
    sorted_l, _ = torch.sort(rejected_ratio)  # (B,)
    losses = _smoothed_logistic(sorted_w - sorted_l, params)  # AOT unpaired, Melnyk et al. 2024
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "apo_zero",
    needs_reference=True,
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization (APO-zero)",
    formula="(1 - σ(β·u_w)) + σ(β·u_l)",
)
def apo_zero_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """APO-zero: raise the chosen likelihood and lower the rejected one (for chosen answers
    better than the model's own)."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    # APO-zero, D'Oosterlinck et al. 2024
    losses = (1 - torch.sigmoid(params.beta * chosen_ratio)) + torch.sigmoid(
        params.beta * rejected_ratio
    )
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "apo_down",
    needs_reference=True,
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization (APO-down)",
    formula="σ(β·u_w) + (1 - σ(β·(u_w - u_l)))",
)
def apo_down_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """APO-down: lower both likelihoods, the rejected more (for chosen answers worse than the
    model's own)."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    # APO-down, D'Oosterlinck et al. 2024
    losses = torch.sigmoid(params.beta * chosen_ratio) + (
        1 - torch.sigmoid(params.beta * (chosen_ratio - rejected_ratio))
    )
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "discopop",
    params=(DISCOPOP_TAU,),
    needs_reference=True,
    paper="Chris Lu et al. 2024, DiscoPOP (log-ratio modulated loss)",
    formula="(1-m)·(-log σ(βh)) + m·exp(-βh), m = σ(βh/τ)",
)
def discopop_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """DiscoPOP: blends the logistic (DPO) and exponential losses by a sigmoid of the margin."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    z = params.beta * (chosen_ratio - rejected_ratio)  # (B,)
    modulation = torch.sigmoid(z / params.discopop_tau)
    # LRML, Lu et al. 2024
    losses = (1 - modulation) * -F.logsigmoid(z) + modulation * torch.exp(-z)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


@register_loss(
    "odpo",
    params=(ODPO_ALPHA,),
    needs_reference=True,
    extra_columns=("offset",),
    paper="Amini et al. 2024, Direct Preference Optimization with an Offset (ODPO)",
    formula="-log σ(β·h - Δ), Δ = per-pair offset",
)
def odpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """ODPO: the chosen must beat the rejected by a margin Δ that grows with how much better it
    is. Δ comes from the dataset column ``offset`` or from scores (see
    :func:`odpo_offset_from_scores`)."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    offset = extras["offset"].to(chosen_ratio.dtype)  # (B,)
    # ODPO, Amini et al. 2024: -log σ(β h - Δ_r)
    losses = -F.logsigmoid(params.beta * (chosen_ratio - rejected_ratio) - offset)
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


def odpo_offset_from_scores(
    score_chosen: float, score_rejected: float, alpha: float = 1.0
) -> float:
    """ODPO's offset from scalar scores: Δ = α·log(1 + s_w - s_l) (0 for equal scores).

    >>> round(odpo_offset_from_scores(3.0, 1.0, alpha=0.5), 4)   # 0.5 * log(3)
    0.5493
    """
    diff = score_chosen - score_rejected
    if diff < 0:
        raise ValueError(f"score_chosen < score_rejected ({score_chosen} < {score_rejected})")
    return alpha * math.log1p(diff)


@register_loss(
    "rdpo",
    params=(RDPO_ALPHA,),
    needs_reference=True,
    paper="Park et al. 2024, Disentangling Length from Quality in DPO (R-DPO)",
    formula="-log σ(β·h - α·(|y_w| - |y_l|))",
)
def rdpo_loss(chosen, rejected, ref_chosen, ref_rejected, params: LossParams, extras=None):
    """Length-regularized DPO: a longer chosen answer must win by more (``rdpo_alpha`` per
    token)."""
    chosen_ratio, rejected_ratio = _log_ratios(chosen, rejected, ref_chosen, ref_rejected)
    length_gap = extras["chosen_tokens"] - extras["rejected_tokens"]  # (B,)
    # R-DPO, Park et al. 2024: β h - α (|y_w| - |y_l|)
    losses = -F.logsigmoid(
        params.beta * (chosen_ratio - rejected_ratio) - params.rdpo_alpha * length_gap
    )
    return LossOutput(losses, *_rewards(params.beta, chosen_ratio, rejected_ratio))


declare(Metric("stat/bco_delta", "BCO: running mean δ of the rewards", "{:+.4f}"))
