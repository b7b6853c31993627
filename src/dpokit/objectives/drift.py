"""The DrPO drift field and loss (Jiang, Wen and Liu 2026): pull a generator's samples toward
the best-rewarded and away from the worst-rewarded samples of their prompt, in a frozen
feature space, with a kernel field summed over several radii and a stop-gradient target.

For generated features x (B, N, D), positives y+ (B, P, D) and negatives y- (B, M, D), the
targets are the generator's own samples, the negatives and the positives (weights 1, w-, w+).
At each radius r the kernel affinity of x_i to a target y_j is
``a_ij = sqrt(softmax_j(k_r(x_i, y_j)) * softmax_i(k_r(x_i, y_j)))`` (normalized both ways; a
point's own entry, and with ``mask_negative_self`` its copy among the negatives, is masked by
a logit penalty of 100 / r), times the target's weight; the field is

    V(x_i) = sum_{j in +} a_ij m-_i (y_j - x_i) - sum_{j in own, -} a_ij m+_i (y_j - x_i)

with m+_i, m-_i the positive and negative affinity masses (the generator's own samples count
among the negatives: samples repel each other), so it vanishes when the positive and negative
pulls balance; each radius's field is divided by its RMS and the fields summed. The loss is
``|x / s - sg(x / s + V)|^2`` (s: the per-dimension feature scale), whose gradient moves x
along V. This is the official code's ``drift_loss`` (UGVly/DrPO, ``src/drpo/drift.py``);
``own_samples_negative=False`` is dpokit's earlier variant, in which the generator's own
samples are no target at all. The reference term is the same field with the frozen base
generator's samples as positives and the generator's own (self-masked) as negatives.

    >>> x = torch.zeros(1, 1, 2)
    >>> field = drift_field(x, torch.tensor([[[1.0, 0.0]]]), x.clone(), radii=(1.0,))
    >>> (field.force[0, 0, 0] > 0).item(), abs(field.force[0, 0, 1].item()) < 1e-6
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

KERNELS = ("laplacian", "rbf")


def pairwise_distances(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, N, D), (B, M, D) -> (B, N, M) Euclidean distances."""
    squared = (x[:, :, None, :] - y[:, None, :, :]).pow(2).sum(-1)  # (B, N, M)
    return squared.clamp_min(eps).sqrt()


def _weights(value: float | torch.Tensor, batch: int, count: int, like: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return value.to(like).expand(batch, count)  # (B, count)
    return like.new_full((batch, count), float(value))


@dataclass
class DriftField:
    """force: (B, N, D) the field at each generated point, in scaled units (sum over radii of
    each radius's field over its RMS); scale_per_dim: () the feature scale s."""

    force: torch.Tensor
    scale_per_dim: torch.Tensor


@torch.no_grad()
def drift_field(x: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                radii: Sequence[float] = (0.02, 0.05, 0.2),
                positive_weight: float | torch.Tensor = 1.0,
                negative_weight: float | torch.Tensor = 1.0,
                mask_negative_self: bool = False, kernel: str = "laplacian",
                own_samples_negative: bool = True) -> DriftField:
    """The multi-radius kernel drift at ``x`` (B, N, D) toward ``positive`` (B, P, D) and away
    from ``negative`` (B, M, D) and, with ``own_samples_negative`` (the official form), from
    the other generated samples; ``mask_negative_self``: negative j == N's own sample j (the
    reference term) is not a target of x_j. Distances are in units of the mean weighted
    distance, so the radii are scale-free."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    x, positive, negative = x.float(), positive.float(), negative.float()
    b, n, d = x.shape
    targets = torch.cat([x, negative, positive], dim=1)  # (B, N + M + P, D): own, -, +
    m, p = negative.shape[1], positive.shape[1]
    weights = torch.cat([x.new_ones(b, n), _weights(negative_weight, b, m, x),
                         _weights(positive_weight, b, p, x)], dim=1)  # (B, T)
    distances = pairwise_distances(x, targets)  # (B, N, T)
    scale = ((distances * weights[:, None, :]).mean() / weights.mean().clamp_min(1e-8)
             ).clamp_min(1e-3)  # mean weighted distance
    scale_per_dim = (scale / math.sqrt(d)).clamp_min(1e-3)
    masked = torch.zeros(1, n, n + m + p, device=x.device)
    masked[0, :, :n] = torch.eye(n, device=x.device)  # a point is not its own target
    if mask_negative_self:
        if m != n:
            raise ValueError("mask_negative_self needs one negative per generated sample")
        masked[0, :, n:n + m] += torch.eye(n, device=x.device)
    first_negative = 0 if own_samples_negative else n  # the official form: own samples repel
    x_scaled, targets_scaled = x / scale_per_dim, targets / scale_per_dim
    force = torch.zeros_like(x_scaled)
    for radius in radii:
        if radius <= 0:
            raise ValueError(f"a kernel radius is > 0, got {radius}")
        normalized = distances / scale / radius  # (B, N, T)
        logits = -normalized if kernel == "laplacian" else -0.5 * normalized.square()
        logits = logits - (100.0 / radius) * masked
        affinity = (logits.softmax(-1) * logits.softmax(-2)).clamp_min(1e-6).sqrt()
        affinity = affinity * weights[:, None, :]  # (B, N, T)
        to_negative = affinity[:, :, first_negative:n + m]
        to_positive = affinity[:, :, n + m:]
        positive_mass = to_positive.sum(-1, keepdim=True)  # (B, N, 1)
        negative_mass = to_negative.sum(-1, keepdim=True)
        coeff = torch.cat([torch.zeros_like(affinity[:, :, :first_negative]),
                           -to_negative * positive_mass, to_positive * negative_mass],
                          dim=2)  # (B, N, T)
        field = (torch.einsum("bnt,btd->bnd", coeff, targets_scaled)
                 - coeff.sum(-1, keepdim=True) * x_scaled)  # (B, N, D): sum_j c_ij (y_j - x_i)
        force += field / field.pow(2).mean().clamp_min(1e-8).sqrt()  # unit RMS per radius
    return DriftField(force, scale_per_dim)


def drift_loss(generated: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
               **field_options) -> torch.Tensor:
    """(B,) per-prompt loss ``mean |x / s - sg(x / s + V(x))|^2`` over the N samples and D
    features; its gradient moves the generated features along the drift field V."""
    field = drift_field(generated.detach(), positive, negative, **field_options)
    goal = generated.detach().float() / field.scale_per_dim + field.force  # stop-gradient target
    return (generated.float() / field.scale_per_dim - goal).pow(2).mean(dim=(-1, -2))  # (B,)
