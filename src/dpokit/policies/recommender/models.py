"""The recommender room's networks: :class:`SessionEncoder`, a causal transformer over a
session (items, the user's responses so far, the session's mode and starting state), and
:class:`NextItemModel`, the policy on it: a distribution over the catalogue for the next item.
(The AMRS application's world model of responses, :mod:`dpokit.apps.amrs.world_model`, is the
same encoder with another head.)

    >>> m = NextItemModel(num_items=10)
    >>> m.continuation_logps(torch.tensor([[1]]), torch.zeros(1, 1, 4), torch.tensor([0]),
    ...                      torch.full((1, 2), 0.5), torch.tensor([[2, 3]])).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import torch
from torch import nn

NUM_SIGNALS = 4  # a response: listened, rating / 5, valence shift, arousal shift
NUM_MODES = 4  # a session's goal (the simulator's MODES: energize, focus, calm, sleep)


class SessionEncoder(nn.Module):
    """items (B, T), signals (B, T, 4) (zeros where unknown), known (B, T) bool, mode (B,),
    start (B, 2) -> (B, T, D) causal hidden states."""

    def __init__(self, num_items: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 max_len: int = 64):
        super().__init__()
        self.item = nn.Embedding(num_items, dim)
        self.signal = nn.Linear(NUM_SIGNALS + 1, dim)  # + a "known" flag
        self.mode = nn.Embedding(NUM_MODES, dim)
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
