"""The load-balancing auxiliary loss of mixture-of-experts routers (Switch Transformer, Fedus
et al. 2021, Eq. 4-6), added to the training loss as the families' own training does:
``coef · N · Σ_i f_i · P_i`` over every MoE layer's router, f_i the fraction of (token, slot)
assignments to expert i, P_i the mean router probability of expert i, counted over real
tokens only (padding left out, whatever the layout).

    >>> logits = (torch.zeros(4, 2),)                # 4 tokens, 2 experts, uniform router
    >>> round(load_balancing_loss(logits, 2, 1, torch.ones(4, dtype=torch.bool)).item(), 4)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .families import text_config


@dataclass(frozen=True)
class Router:
    """A family's routing: experts N, slots per token (top-k), the loss weight (coef)."""

    experts: int
    top_k: int
    coef: float


def router_of(config, coef: float | None = None) -> Router | None:
    """The config's routing, or None (no MoE router, or coef 0). ``coef`` None: the model's own
    ``router_aux_loss_coef``."""
    text = text_config(config)
    experts = getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None)
    top_k = getattr(text, "num_experts_per_tok", None)
    if not experts or not top_k:
        return None
    coef = getattr(text, "router_aux_loss_coef", 0.0) if coef is None else coef
    return Router(int(experts), int(top_k), float(coef)) if coef else None


def load_balancing_loss(router_logits, experts: int, top_k: int,
                        real: torch.Tensor) -> torch.Tensor:
    """router_logits: per layer (R·T, N) logits; real: (R·T,) bool, the tokens that count ->
    () N · Σ_i f_i · P_i (1 at a perfectly balanced router)."""
    weight = real.reshape(-1).float()  # (R·T,)
    assigned = torch.zeros(experts, device=weight.device)  # (N,) slot counts
    probability = torch.zeros(experts, device=weight.device)  # (N,) summed probabilities
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)  # (R·T, N)
        chosen = probs.topk(top_k, dim=-1).indices  # (R·T, k)
        assigned = assigned.scatter_add(0, chosen.reshape(-1),
                                        weight.repeat_interleave(top_k))  # Eq. 5: f_i
        probability = probability + (probs * weight[:, None]).sum(0)  # Eq. 6: P_i
    rows = weight.sum() * len(router_logits)
    return experts * torch.sum((assigned / rows) * (probability / rows))  # Eq. 4
