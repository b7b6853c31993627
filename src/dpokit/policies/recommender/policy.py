"""A recommender as a :class:`~dpokit.core.Policy`: it scores a list of items recommended after
a session's context, ``log pi(list | context) = sum_k log pi(item_k | context, items <k)``
(no repeats in a session), so the generic loop trains it with SFT (behaviour cloning) or DPO
exactly as a language model.

    >>> ctx = Context(mode=0, start=(0.5, 0.5), items=(1, 2), signals=((1, .8, 0, 0),) * 2)
    >>> batch = collate_pairs([ItemPair(0, ctx, (3, 4), (5, 6))])
    >>> batch.continuation.tolist(), batch.num_sequences    # chosen rows, then rejected
    ([[3, 4], [5, 6]], 2)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.protocols import BasePolicy, PolicyCapabilities, PolicyDescription
from ...core.types import SequenceScores
from .models import NextItemModel


@dataclass(frozen=True)
class Context:
    """What the recommender sees: the session's mode and starting (valence, arousal), the
    items shown so far and the responses to them (listened, rating / 5, shifts)."""

    mode: int
    start: tuple[float, float]
    items: tuple[int, ...]
    signals: tuple[tuple[float, ...], ...]
    user: int = -1  # for bookkeeping (simulation); the policy never reads it


@dataclass(frozen=True)
class ItemSequence:
    """A context and the list that followed it (behaviour cloning)."""

    index: int
    context: Context
    items: tuple[int, ...]


@dataclass(frozen=True)
class ItemPair:
    """A context, the preferred list and the other one."""

    index: int
    context: Context
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


@dataclass
class SessionBatch:
    """S scored lists after their contexts (pairs: the E chosen, then the E rejected).

    context_items (S, C) long; context_signals (S, C, 4); mode (S,) long; start (S, 2);
    continuation (S, K) long; example_index (E,); score_target (S*K,): the scored items
    (SFT counts them); extras: per-pair values (none here)."""

    context_items: torch.Tensor
    context_signals: torch.Tensor
    mode: torch.Tensor
    start: torch.Tensor
    continuation: torch.Tensor
    example_index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    ref_logps: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return self.continuation.shape[0]

    @property
    def score_target(self) -> torch.Tensor:
        return self.continuation.reshape(-1)

    @property
    def num_tokens(self) -> int:
        return int(self.context_items.numel() + self.continuation.numel())

    def to(self, device) -> SessionBatch:
        move = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return SessionBatch(**{**vars(self), **move})


def context_tensors(contexts: Sequence[Context]) -> dict[str, torch.Tensor]:
    """The contexts' tensors: context_items (N, C), context_signals (N, C, 4), mode (N,),
    start (N, 2)."""
    return {"context_items": torch.tensor([c.items for c in contexts], dtype=torch.long),
            "context_signals": torch.tensor([c.signals for c in contexts], dtype=torch.float32),
            "mode": torch.tensor([c.mode for c in contexts], dtype=torch.long),
            "start": torch.tensor([c.start for c in contexts], dtype=torch.float32)}


def collate_sequences(rows: list[ItemSequence]) -> SessionBatch:
    return SessionBatch(**context_tensors([r.context for r in rows]),
                        continuation=torch.tensor([r.items for r in rows], dtype=torch.long),
                        example_index=torch.tensor([r.index for r in rows]))


def collate_pairs(rows: list[ItemPair]) -> SessionBatch:
    contexts = [r.context for r in rows] * 2
    lists = [r.chosen for r in rows] + [r.rejected for r in rows]
    return SessionBatch(**context_tensors(contexts),
                        continuation=torch.tensor(lists, dtype=torch.long),
                        example_index=torch.tensor([r.index for r in rows]))


class SessionPolicy(BasePolicy):
    """:class:`NextItemModel` as a policy; the reference is a frozen copy of the model it
    starts from (the behaviour-cloned policy)."""

    def __init__(self, model: NextItemModel, reference: bool = True):
        self.model = model
        self.forward_module: nn.Module = _Lists(model)  # what accelerate prepared (DDP)
        self.reference_model = (copy.deepcopy(model).eval().requires_grad_(False)
                                if reference else None)
        self.capabilities = PolicyCapabilities(reference="copy" if reference else "none",
                                               deterministic=True)

    def logps(self, batch: SessionBatch, *, sampling_norm: bool = False) -> SequenceScores:
        return SequenceScores(*_sum(self.forward_module(batch), batch))

    @torch.no_grad()
    def reference_logps(self, batch: SessionBatch) -> SequenceScores:
        if self.reference_model is None:
            raise RuntimeError("this policy has no reference (reference=False)")
        return SequenceScores(*_sum(_Lists(self.reference_model)(batch), batch))

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def prepare(self, accelerator) -> list[nn.Module]:
        self.forward_module = accelerator.prepare(_Lists(self.model))
        if self.reference_model is not None:
            self.reference_model.to(accelerator.device)
        return [self.forward_module]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def describe(self) -> PolicyDescription:
        head = self.model.head
        return PolicyDescription(
            "recommender", f"NextItemModel: session transformer over {head.out_features} "
            f"items (dim {head.in_features}, {len(self.model.encoder.body.layers)} layers)")

    def save_pretrained(self, directory: str | Path | None) -> None:
        if directory is None:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "recommender.pt")
        head = self.model.head
        (directory / "config.json").write_text(json.dumps(
            {"num_items": head.out_features, "dim": head.in_features,
             "layers": len(self.model.encoder.body.layers)}))


class _Lists(nn.Module):
    """The forward accelerate wraps: (S, K) item log-probs of a batch's lists."""

    def __init__(self, model: NextItemModel):
        super().__init__()
        self.model = model

    def forward(self, batch: SessionBatch) -> torch.Tensor:
        return self.model.continuation_logps(batch.context_items, batch.context_signals,
                                             batch.mode, batch.start, batch.continuation)


def _sum(logps: torch.Tensor, batch: SessionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.full((batch.num_sequences,), batch.continuation.shape[1],
                        device=logps.device)
    return logps.sum(1), counts  # (S,), (S,)


def load_session_policy(directory: str | Path, reference: bool = False) -> SessionPolicy:
    """A policy saved by :meth:`SessionPolicy.save_pretrained`."""
    directory = Path(directory)
    config: dict[str, Any] = json.loads((directory / "config.json").read_text())
    model = NextItemModel(**config)
    model.load_state_dict(torch.load(directory / "recommender.pt", weights_only=True))
    return SessionPolicy(model, reference)
