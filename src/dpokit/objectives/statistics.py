"""The batch statistics losses read (:class:`~dpokit.losses.Statistic`): pooled over
processes, and, for the ``running`` and ``ema`` tracks, carried across steps and saved in
checkpoints (so a resumed run continues with the values an uninterrupted one has).

    >>> tracker = StatisticTracker(Statistic("delta", lambda *a: None, "running"))
    >>> tracker.observe(torch.tensor([1.0, 3.0]), training=True)["delta"].item()
    2.0
    >>> tracker.observe(torch.tensor([8.0]), training=True)["delta"].item()   # (1 + 3 + 8) / 3
    4.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..losses import Statistic


@dataclass(frozen=True)
class BatchMoments:
    """Count, mean and sum of squared deviations (M2) of a micro-batch's values, all
    processes together (float64 scalars)."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def pooled(cls, values: torch.Tensor,
               reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None) -> BatchMoments:
        """From this process's values (K,) and ``reduce_sum`` over processes (None: one)."""
        v = values.detach().double()  # (K,)
        sums = torch.stack([v.new_tensor(v.numel()), v.sum(), v.pow(2).sum()])  # (3,)
        if reduce_sum is not None:
            sums = reduce_sum(sums)
        # the state lives on the CPU; the loss reads 0-dim CPU tensors as scalars on any device
        count, total, squares = sums.cpu().unbind()
        mean = total / count.clamp(min=1)
        return cls(count, mean, (squares - count * mean * mean).clamp(min=0))

    @property
    def std(self) -> torch.Tensor:
        """The unbiased standard deviation (0 for fewer than 2 values)."""
        if self.count < 2:
            return self.m2.new_tensor(0.0)
        return (self.m2 / (self.count - 1)).sqrt()


class StatisticTracker:
    """The value of one :class:`Statistic` for each micro-batch, and its state across steps.

    running: count, mean and M2 combined with each training micro-batch by Chan et al.'s
    parallel update (as TRL's ``RunningMoments``); ema: moving mean and std from 0.
    """

    def __init__(self, statistic: Statistic):
        self.statistic = statistic
        self.count = torch.zeros((), dtype=torch.float64)
        self.mean = torch.zeros((), dtype=torch.float64)
        self.m2 = torch.zeros((), dtype=torch.float64)  # running: sum of squared deviations
        self.std = torch.zeros((), dtype=torch.float64)  # ema: moving standard deviation

    def observe(self, values: torch.Tensor, training: bool,
                reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        """The extras the loss reads for a micro-batch with these (K,) values; in training,
        the running or moving state is updated first (this batch included)."""
        batch = BatchMoments.pooled(values, reduce_sum)
        key, track = self.statistic.key, self.statistic.track
        if track == "batch":
            return {key: batch.mean.float()}
        if training:
            self._update(batch)
        if self.count == 0:  # evaluating before any training step: the batch's own figures
            return {key: batch.mean.float(), f"{key}_std": batch.std.float()}
        if track == "running":
            return {key: self.mean.float()}
        return {key: self.mean.float(), f"{key}_std": self.std.float()}

    def figures(self) -> dict[str, torch.Tensor]:
        """What to log: the running or moving values the loss reads now (nothing for a batch
        statistic, or before the first training step)."""
        key, track = self.statistic.key, self.statistic.track
        if track == "batch" or self.count == 0:
            return {}
        out = {f"stat/{key}": self.mean.float().reshape(1)}
        if track == "ema":
            out[f"stat/{key}_std"] = self.std.float().reshape(1)
        return out

    def _update(self, batch: BatchMoments) -> None:
        if self.statistic.track == "running":
            # Chan et al. 1979: merge (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b)
            total = self.count + batch.count
            delta = batch.mean - self.mean
            self.mean = self.mean + delta * batch.count / total
            self.m2 = self.m2 + batch.m2 + delta * delta * self.count * batch.count / total
            self.count = total
        else:  # ema, from 0 as β-DPO's code: m <- γ·m + (1-γ)·batch
            gamma = self.statistic.gamma
            self.mean = gamma * self.mean + (1 - gamma) * batch.mean
            self.std = gamma * self.std + (1 - gamma) * batch.std
            self.count = self.count + 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean = state["count"].double(), state["mean"].double()
        self.m2, self.std = state["m2"].double(), state["std"].double()
