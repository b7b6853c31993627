"""Value types that cross layer boundaries: per-sequence scores, loss outputs, metric sums.

    >>> scores = SequenceScores(torch.tensor([-2.0, -5.0]), torch.tensor([2, 5]))
    >>> scores.pairs().chosen.item(), scores.pairs().rejected_tokens.item()
    (-2.0, 5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .catalogue import Metric, declare


@dataclass
class SequenceScores:
    """Per-sequence scores of the S sequences of a batch, as a policy returns them.

    logps: (S,) log-probs summed over each sequence's scored tokens (fp32; differentiable
        when they come from the trainable policy).
    tokens: (S,) scored token counts.
    sampling_norm: (S,) or None, detached: the sum over a sequence's scored tokens of
        log sum_v p(v)^2 (the per-token normalizer of WPO, Zhou et al. 2024, Eq. 2); only
        filled when asked for and the policy declares ``token_distribution``.
    entropy / correct: (S,) or None, detached: the sums over a sequence's scored tokens of
        the next-token entropy (nats) and of argmax == target (token accuracy).
    aux_loss: () or None: a term the training loss adds for the whole batch, with gradients
        (a mixture-of-experts model's weighted router load-balancing loss).

    Preference batches order their sequences as the B chosen, then the B rejected completions.
    """

    logps: torch.Tensor
    tokens: torch.Tensor
    sampling_norm: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None

    def token_metrics(self) -> MetricSums:
        """Token entropy and accuracy as (sum, count) metrics over the scored tokens."""
        metrics = MetricSums()
        if self.entropy is not None and self.correct is not None:
            count = float(self.tokens.sum())
            metrics.add("entropy", self.entropy.sum().reshape(1), count=count)
            metrics.add("mean_token_accuracy", self.correct.sum().reshape(1), count=count)
        if self.aux_loss is not None:
            metrics.add("router_aux", self.aux_loss.detach().float().reshape(1))
        return metrics

    def with_aux(self, losses: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        """(E,) per-example losses with the batch's ``aux_loss`` added once per unit (``units``
        (E,) per example, default 1), so the loop's normalization by global units averages it
        over the step like the losses."""
        if self.aux_loss is None:
            return losses
        return losses + self.aux_loss * (1.0 if units is None else units)

    def pairs(self) -> PairLogps:
        """Split S = 2B sequences into B (chosen, rejected) pairs."""
        b = self.logps.shape[0] // 2
        norm = self.sampling_norm
        return PairLogps(self.logps[:b], self.logps[b:], self.tokens[:b], self.tokens[b:],
                         None if norm is None else norm[:b], None if norm is None else norm[b:])


@dataclass
class PairLogps:
    """Per-sequence log-probs of a batch of B pairs.

    chosen / rejected: (B,) log-probs summed over completion tokens (fp32).
    chosen_tokens / rejected_tokens: (B,) completion token counts (for length normalization).
    chosen_norm / rejected_norm: (B,) or None: summed log sum_v p(v)^2 (see SequenceScores).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    chosen_norm: torch.Tensor | None = None
    rejected_norm: torch.Tensor | None = None

    def per_token(self) -> PairLogps:
        """The log-probs in fp32, averaged per completion token (an empty completion counts 1).

        >>> PairLogps(torch.tensor([-6.0]), torch.tensor([-6.0]), torch.tensor([2]),
        ...           torch.tensor([3])).per_token().chosen.item()
        -3.0
        """
        c, r = self.chosen_tokens.clamp(min=1), self.rejected_tokens.clamp(min=1)
        return PairLogps(self.chosen.float() / c, self.rejected.float() / r,  # (B,), (B,)
                         self.chosen_tokens, self.rejected_tokens,
                         None if self.chosen_norm is None else self.chosen_norm / c,
                         None if self.rejected_norm is None else self.rejected_norm / r)


class LossOutput(NamedTuple):
    """Per-pair results of a loss.

    losses: (B,) the loss of each pair, differentiable.
    chosen_rewards: (B,) implicit reward of the chosen completion, detached.
    rejected_rewards: (B,) implicit reward of the rejected completion, detached.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@dataclass
class MetricSums:
    """Metrics as (sum, count) per name, so that micro-batches, steps and processes combine
    exactly: the reported value is sum of sums / sum of counts.

    >>> m = MetricSums(); m.add("acc", torch.tensor([1.0, 0.0])); m.add("acc", torch.tensor([1.0]))
    >>> m.means()
    {'acc': 0.6666666666666666}
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, values: torch.Tensor, count: float | None = None) -> None:
        """Add ``values`` (any shape; summed) counted as ``count`` items (default: numel)."""
        values = values.detach()
        self.sums[name] = self.sums.get(name, 0.0) + float(values.double().sum())
        count = values.numel() if count is None else count
        self.counts[name] = self.counts.get(name, 0.0) + count

    def merge(self, other: MetricSums) -> None:
        for name in other.sums:
            self.sums[name] = self.sums.get(name, 0.0) + other.sums[name]
            self.counts[name] = self.counts.get(name, 0.0) + other.counts[name]

    def as_tensor(self, names: list[str]) -> torch.Tensor:
        """(2K,) float64: the sums then the counts of ``names`` (for one all-reduce)."""
        return torch.tensor(
            [self.sums.get(n, 0.0) for n in names] + [self.counts.get(n, 0.0) for n in names],
            dtype=torch.float64,
        )

    @classmethod
    def from_tensor(cls, names: list[str], values: torch.Tensor) -> MetricSums:
        k = len(names)
        return cls(
            dict(zip(names, values[:k].tolist(), strict=True)),
            dict(zip(names, values[k:].tolist(), strict=True)),
        )

    def means(self) -> dict[str, float]:
        return {n: self.sums[n] / self.counts[n] for n in self.sums if self.counts[n]}


@dataclass(frozen=True)
class Domain:
    """The allowed values of a numeric setting: ``low < value < high``, with ``*_inclusive``
    allowing the bound itself.

    >>> Domain(low=0.0).check("beta", -1.0)
    'beta must be > 0, got -1.0'
    >>> Domain(0.0, 0.5, low_inclusive=True).describe()
    '[0, 0.5)'
    """

    low: float = -math.inf
    high: float = math.inf
    low_inclusive: bool = False
    high_inclusive: bool = False

    def check(self, name: str, value: float) -> str | None:
        """An error message when ``value`` is outside the domain, else None."""
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if value < self.low or (value == self.low and not self.low_inclusive):
            return f"{name} must be {'>=' if self.low_inclusive else '>'} {self.low:g}, got {value}"
        if value > self.high or (value == self.high and not self.high_inclusive):
            return (
                f"{name} must be {'<=' if self.high_inclusive else '<'} {self.high:g}, got {value}"
            )
        return None

    def describe(self) -> str:
        return (
            f"{'[' if self.low_inclusive else '('}{self.low:g}, "
            f"{self.high:g}{']' if self.high_inclusive else ')'}"
        )


POSITIVE = Domain(low=0.0)
NON_NEGATIVE = Domain(low=0.0, low_inclusive=True)
AT_LEAST_ONE = Domain(low=1.0, low_inclusive=True)
UNIT_INTERVAL = Domain(0.0, 1.0, low_inclusive=True, high_inclusive=True)


declare(Metric("entropy", "mean token entropy (nats)", "{:.3f}", "tokens"),
        Metric("mean_token_accuracy", "argmax token accuracy", "{:.3f}", "tokens"),
        Metric("router_aux", "MoE router load-balancing loss (weighted)", "{:.4f}", "tokens"))
