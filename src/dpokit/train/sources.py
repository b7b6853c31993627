"""Data sources: where each optimizer step's micro-batches come from.

:class:`StaticSource` is a fixed dataset in a seeded order per epoch: the micro-batches of a
step are a pure function of ``(seed, step)``, so resuming needs only the step, and the
reference can be precomputed on exactly the batches training will see. An online source
(see :class:`dpokit.core.DataSource`) instead makes batches from the current policy and keeps
its own resumable state.

    >>> src = StaticSource(list(range(10)), collate=list, batch_size=2, grad_accum_steps=2)
    >>> src.steps_per_epoch, src.step_indices(0)[1]     # 3 steps; step 0 takes 4 examples
    (3, 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    """[[0, 1, ..., batch_size-1], [batch_size, ...], ...] covering range(n)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


class StepShares:
    """For a source whose steps take ``batch_size x grad_accum_steps`` examples per process,
    each process its share (``rank::world``) of every step."""

    batch_size: int
    grad_accum_steps: int
    world: int
    rank: int

    def shard(self, world: int, rank: int) -> None:
        """Take this process's share of every step."""
        self.world, self.rank = world, rank

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps * self.world

    def steps_for(self, examples: int) -> int:
        """Steps that cover ``examples`` once (the last one may be short)."""
        return max(1, math.ceil(examples / self.examples_per_step))


@dataclass
class StaticSource(StepShares):
    """A fixed dataset, collated in micro-batches of ``batch_size`` examples per process.

    collate: examples -> batch; if it has a ``key`` (str), the key names the layout in the
        reference cache. fingerprint: identifies the data (every token id), or None (then the
        reference is never cached on disk).
    """

    dataset: Sequence[Any]
    collate: Callable[[list[Any]], Any]
    batch_size: int
    grad_accum_steps: int = 1
    seed: int = 0
    shuffle: bool = True
    fingerprint: str | None = None
    collate_key: str = ""
    world: int = 1
    rank: int = 0
    precomputable: bool = True

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_for(len(self.dataset))

    def epoch_order(self, epoch: int) -> list[int]:
        """A seeded permutation per epoch (a different one each epoch)."""
        if not self.shuffle:
            return list(range(len(self.dataset)))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def step_indices(self, step: int) -> tuple[list[list[int]], int]:
        """The example indices of this process's micro-batches at ``step``, and how many
        examples the step takes over all processes."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        per_step = self.examples_per_step
        chunk = self.epoch_order(epoch)[offset * per_step:(offset + 1) * per_step]
        mine = chunk[self.rank::self.world]
        micro = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        return micro, len(chunk)

    def micro_batches(self, step: int, policy: Any = None) -> list[Any]:
        return [self.collate([self.dataset[i] for i in indices])
                for indices in self.step_indices(step)[0]]

    def step_metrics(self) -> dict[str, float]:
        return {}

    def reference_plan(self) -> list[list[int]]:
        """The batches the reference is precomputed on: this process's epoch-0 micro-batches
        (the same row composition as the first training pass; later epochs only reorder)."""
        return [mb for step in range(self.steps_per_epoch) for mb in self.step_indices(step)[0]]

    def state_dict(self) -> dict[str, Any]:
        return {}  # the order is a pure function of (seed, step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class EvalSet:
    """Held-out examples, evaluated in file order in batches of ``batch_size`` (every process
    evaluates all of them)."""

    dataset: Sequence[Any]
    collate: Callable[[list[Any]], Any]
    batch_size: int
    fingerprint: str | None = None
    collate_key: str = ""
    precomputable: bool = True

    def batch_indices(self) -> list[list[int]]:
        return sequential_batches(len(self.dataset), self.batch_size)

    def reference_plan(self) -> list[list[int]]:
        return self.batch_indices()

    def batches(self):
        for indices in self.batch_indices():
            yield self.collate([self.dataset[i] for i in indices])
