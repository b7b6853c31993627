"""An online source: every step, pairs made from the current policy's own samples (online DPO,
Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback").

Each step takes the next ``prompts_per_step`` prompts of a seeded order (a fresh permutation
per pass over the prompts), asks ``make_pairs`` for examples (sample K completions from the
policy, score them, pair them, tokenize: the modality's business), and cuts them into
micro-batches. The prompt order and the sampling seed are pure functions of (seed, step,
rank), so resuming from a checkpoint reproduces the run given the same weights; the state it
saves is only its running statistics. A step whose prompts made no pair (every sample tied)
takes further prompts, so no step is empty.

    >>> src = OnlineSource(prompts=list("abcdef"), make_pairs=None, collate=list, batch_size=2,
    ...                    prompts_per_step=4, seed=0)
    >>> len(src.step_prompts(0)), sorted(src.step_prompts(0) + src.step_prompts(1)[:2])
    (4, ['a', 'b', 'c', 'd', 'e', 'f'])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MadePairs:
    """What ``make_pairs`` returns: the examples to train on and what it measured (e.g.
    ``online/reward_mean``, the mean reward of every sample it drew)."""

    examples: list[Any]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class OnlineSource:
    """prompts: the prompt pool. make_pairs(policy, prompts, seed) -> :class:`MadePairs`.
    collate: examples -> batch. batch_size: examples per micro-batch."""

    prompts: Sequence[Any]
    make_pairs: Callable[[Any, list[Any], int], MadePairs] | None
    collate: Callable[[list[Any]], Any]
    batch_size: int
    prompts_per_step: int
    seed: int = 0
    world: int = 1
    rank: int = 0
    steps_per_epoch: int | None = None
    precomputable: bool = False
    last_metrics: dict[str, float] = field(default_factory=dict)
    pairs_made: int = 0

    @property
    def fingerprint(self) -> str:
        text = json.dumps([repr(p) for p in self.prompts])
        return "online:" + hashlib.sha256(text.encode()).hexdigest()

    def shard(self, world: int, rank: int) -> None:
        self.world, self.rank = world, rank

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def step_prompts(self, step: int, extra: int = 0) -> list[Any]:
        """This process's prompts at ``step``; ``extra`` > 0: a refill, the prompts of the
        step ``extra`` ahead (used again there, with other samples)."""
        per_step = self.prompts_per_step * self.world
        start = (step + extra) * per_step
        picked = []
        for position in range(start, start + per_step):
            epoch, offset = divmod(position, len(self.prompts))
            picked.append(self.prompts[self._order(epoch)[offset]])
        return picked[self.rank::self.world]

    def micro_batches(self, step: int, policy: Any) -> list[Any]:
        assert self.make_pairs is not None
        examples: list[Any] = []
        metrics: dict[str, float] = {}
        for extra in range(len(self.prompts) + 1):
            seed = ((self.seed * 1_000_003 + step) * 1_009 + extra) * 64 + self.rank
            made = self.make_pairs(policy, self.step_prompts(step, extra), seed)
            examples += made.examples
            metrics = metrics or made.metrics
            if examples:
                break
        if not examples:
            raise RuntimeError(f"online step {step}: no prompt gave a pair (every sample tied "
                               f"under the reward); raise temperature or num_samples")
        self.pairs_made += len(examples)
        self.last_metrics = {**metrics, "online/pairs": float(len(examples))}
        return [self.collate(examples[i:i + self.batch_size])
                for i in range(0, len(examples), self.batch_size)]

    def step_metrics(self) -> dict[str, float]:
        return dict(self.last_metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"pairs_made": self.pairs_made}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairs_made = int(state.get("pairs_made", 0))
