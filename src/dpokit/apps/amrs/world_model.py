"""The offline stand-in for users (AMRS): the session encoder with a head that predicts the
response to each item shown (listened, rating, valence and arousal shifts) from the items and
responses before it, and rolls a continuation forward on its own predictions.

    >>> wm = WorldModel(num_items=10)
    >>> out = wm(torch.tensor([[1, 2]]), torch.zeros(1, 2, 4), torch.tensor([0]),
    ...          torch.full((1, 2), 0.5))
    >>> out.shape      # (B, T, 4): listen logit, rating / 5 if listened, valence, arousal
    torch.Size([1, 2, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...policies.recommender.models import NUM_SIGNALS, SessionEncoder


class WorldModel(nn.Module):
    """Predicts the response to item t from items 0..t and responses 0..t-1."""

    def __init__(self, num_items: int, dim: int = 64, layers: int = 2):
        super().__init__()
        self.encoder = SessionEncoder(num_items, dim, layers)
        self.head = nn.Linear(dim, NUM_SIGNALS)

    def forward(self, items, prev_signals, mode, start) -> torch.Tensor:
        """items (B, T); prev_signals (B, T, 4): the response to the item before (row 0:
        zeros) -> (B, T, 4) raw predictions."""
        known = torch.ones_like(items, dtype=torch.bool)
        known[:, 0] = False
        return self.head(self.encoder(items, prev_signals, known, mode, start))

    @staticmethod
    def shifted(signals: torch.Tensor) -> torch.Tensor:
        """(B, T, 4) responses -> the previous item's response at each position."""
        return torch.cat([torch.zeros_like(signals[:, :1]), signals[:, :-1]], 1)

    def loss(self, items, signals, mode, start) -> tuple[torch.Tensor, dict[str, float]]:
        """BCE on listened, MSE on the rating of listened items, MSE on the two shifts."""
        out = self(items, self.shifted(signals), mode, start)  # (B, T, 4)
        listened = signals[..., 0]
        parts = {
            "listen": F.binary_cross_entropy_with_logits(out[..., 0], listened),
            "rating": ((out[..., 1] - signals[..., 1]).pow(2) * listened).sum()
            / listened.sum().clamp_min(1),
            "valence": F.mse_loss(out[..., 2], signals[..., 2]),
            "arousal": F.mse_loss(out[..., 3], signals[..., 3]),
        }
        total = parts["listen"] + 4 * (parts["rating"] + parts["valence"] + parts["arousal"])
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @staticmethod
    def expected(out: torch.Tensor) -> torch.Tensor:
        """(..., 4) raw predictions -> expected signals: p(listen), p * rating / 5, shifts."""
        p = torch.sigmoid(out[..., 0])
        return torch.stack([p, p * out[..., 1], out[..., 2], out[..., 3]], -1)

    @torch.no_grad()
    def rollout(self, context_items, context_signals, mode, start, continuation) -> torch.Tensor:
        """Predicted expected signals (N, K, 4) of showing ``continuation`` (N, K) after the
        context (N, C) and its observed responses, each prediction fed back as the response
        the next step conditions on."""
        items = torch.cat([context_items, continuation], 1)  # (N, C+K)
        signals = torch.cat([context_signals, torch.zeros(*continuation.shape, NUM_SIGNALS,
                                                          device=items.device)], 1)
        c = context_items.shape[1]
        for k in range(continuation.shape[1]):
            out = self(items[:, :c + k + 1], self.shifted(signals[:, :c + k + 1]), mode, start)
            signals[:, c + k] = self.expected(out[:, -1])
        return signals[:, c:]
