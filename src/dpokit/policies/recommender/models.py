"""The recommender room's networks: a causal transformer over a session (items, the user's
responses so far, the session's mode and starting state), used twice:

- :class:`WorldModel` predicts the response to each item shown (listened, rating, valence and
  arousal shifts) from the items and responses before it: the offline stand-in for users.
- :class:`NextItemModel` is the policy: a distribution over the catalogue for the next item.

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

from .simulator import MODES, NUM_SIGNALS


class SessionEncoder(nn.Module):
    """items (B, T), signals (B, T, 4) (zeros where unknown), known (B, T) bool, mode (B,),
    start (B, 2) -> (B, T, D) causal hidden states."""

    def __init__(self, num_items: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 max_len: int = 64):
        super().__init__()
        self.item = nn.Embedding(num_items, dim)
        self.signal = nn.Linear(NUM_SIGNALS + 1, dim)  # + a "known" flag
        self.mode = nn.Embedding(len(MODES), dim)
        self.start = nn.Linear(2, dim)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, items, signals, known, mode, start) -> torch.Tensor:
        t = items.shape[1]
        flag = known.to(signals.dtype).unsqueeze(-1)  # (B, T, 1)
        x = (self.item(items) + self.signal(torch.cat([signals * flag, flag], -1))
             + (self.mode(mode) + self.start(start)).unsqueeze(1)
             + self.position(torch.arange(t, device=items.device)))  # (B, T, D)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=items.device)
        return self.norm(self.body(x, mask=causal, is_causal=True))  # (B, T, D)


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


class NextItemModel(nn.Module):
    """The policy network: logits over the catalogue for the item after each position."""

    def __init__(self, num_items: int, dim: int = 64, layers: int = 2):
        super().__init__()
        self.encoder = SessionEncoder(num_items, dim, layers)
        self.head = nn.Linear(dim, num_items)

    def forward(self, items, signals, known, mode, start) -> torch.Tensor:
        return self.head(self.encoder(items, signals, known, mode, start))  # (B, T, I)

    def continuation_logps(self, context_items, context_signals, mode, start,
                           continuation) -> torch.Tensor:
        """(S, K) log-probs of each continuation item given the context and the items before
        it, over the items not yet in the session (no repeats within a session)."""
        c, k = context_items.shape[1], continuation.shape[1]
        items = torch.cat([context_items, continuation[:, :-1]], 1)  # (S, C+K-1)
        signals = torch.cat([context_signals, torch.zeros(
            *continuation[:, :-1].shape, NUM_SIGNALS, device=items.device)], 1)
        known = torch.zeros_like(items, dtype=torch.bool)
        known[:, :c] = True
        logits = self(items, signals, known, mode, start)[:, c - 1:].float()  # (S, K, I)
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen.scatter_(2, context_items.unsqueeze(1).expand(-1, k, -1), True)
        for j in range(1, k):  # an item shown earlier in the continuation is excluded later
            seen[:, j].scatter_(1, continuation[:, :j], True)
        logps = logits.masked_fill(seen, float("-inf")).log_softmax(-1)  # (S, K, I)
        return logps.gather(2, continuation.unsqueeze(-1)).squeeze(-1)  # (S, K)

    @torch.no_grad()
    def sample(self, context_items, context_signals, mode, start, length: int,
               temperature: float = 1.0, generator: torch.Generator | None = None,
               greedy: bool = False) -> torch.Tensor:
        """(N, length) continuations drawn item by item without repeats in the session."""
        items, signals = context_items, context_signals
        chosen = []
        for _ in range(length):
            known = torch.zeros_like(items, dtype=torch.bool)
            known[:, :context_items.shape[1]] = True
            logits = self(items, signals, known, mode, start)[:, -1].float()  # (N, I)
            logits = logits.scatter(1, items, float("-inf"))
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1)
                nxt = nxt.to(items.device)
            chosen.append(nxt)
            items = torch.cat([items, nxt[:, None]], 1)
            signals = torch.cat([signals, torch.zeros_like(signals[:, :1])], 1)
        return torch.stack(chosen, 1)
