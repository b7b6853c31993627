"""Generation metrics with known answers: distinct-n, repetition, sequence-level KL from the
policy's own samples, and win rates under a judge (order randomized, ties counted, and a
length-controlled variant that regresses out the length difference, as AlpacaEval 2 does).

    >>> distinct_n(["a b a b"], 1), distinct_n(["a b a b"], 2)
    (0.5, 0.6666666666666666)
    >>> sequence_kl([-1.0, -2.0], [-1.5, -2.5]).mean
    0.5
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.builders.failures import repeated_share
from .judges import LLMJudge


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of all texts (1.0: nothing repeats)."""
    grams = [g for t in texts for g in _ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 3) -> float:
    """Mean over texts of the share of word n-grams repeating an earlier one in that text."""
    return sum(repeated_share(t.split(), n) for t in texts) / max(len(texts), 1)


@dataclass
class Estimate:
    """A mean and its standard error over ``n`` independent values."""

    mean: float
    stderr: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        n = len(values)
        mean = sum(values) / max(n, 1)
        var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
        return cls(mean, math.sqrt(var / max(n, 1)), n)


def sequence_kl(policy_logps: Sequence[float], reference_logps: Sequence[float]) -> Estimate:
    """KL(π || π_ref) = E_{y~π}[log π(y|x) - log π_ref(y|x)], estimated from the policy's own
    samples (each value one sample's summed log-probs); unbiased, so it can dip below 0 by
    noise on a model next to its reference."""
    return Estimate.of([p - r for p, r in zip(policy_logps, reference_logps, strict=True)])


Judge = Callable[[Any, str, str], float]  # (prompt, first, second) -> 1 first, 0 second, .5 tie


def reward_judge(reward: Callable[[Sequence[Any], Sequence[str], Sequence[Any]], list[float]],
                 tie_margin: float = 0.0) -> Judge:
    """A judge from a reward: the higher-scored answer wins; within ``tie_margin``, a tie."""

    def judge(prompt, first, second):
        a, b = reward([prompt, prompt], [first, second], [None, None])
        return 0.5 if abs(a - b) <= tie_margin else float(a > b)

    return judge


@dataclass
class WinRate:
    """Outcomes of ``candidate`` vs ``baseline``: wins, ties, losses; ``rate`` = (wins + ties/2)
    / n with its standard error; ``length_controlled``: the rate at equal length (the
    intercept of a logistic fit of the outcome on tanh(length difference / its std))."""

    wins: int
    ties: int
    losses: int
    rate: float
    stderr: float
    length_controlled: float


def _fit_length_controlled(outcomes: list[float], length_diff: list[float]) -> float:
    """logit P(candidate wins) = θ + φ·tanh(Δlen / sd(Δlen)), ties as half a win (weighted
    logistic likelihood), fitted by Newton's method; returns sigmoid(θ), the win rate when the
    lengths are equal (AlpacaEval 2's length control, without its per-instruction terms)."""
    y = torch.tensor(outcomes, dtype=torch.float64)  # (n,) in {0, 0.5, 1}
    d = torch.tensor(length_diff, dtype=torch.float64)  # (n,)
    scale = d.std() if len(outcomes) > 1 and d.std() > 0 else torch.tensor(1.0)
    x = torch.stack([torch.ones_like(d), torch.tanh(d / scale)], 1)  # (n, 2)
    w = torch.zeros(2, dtype=torch.float64)
    ridge = 1e-6 * torch.eye(2, dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(x @ w)  # (n,)
        grad = x.T @ (y - p)  # (2,)
        hess = (x * (p * (1 - p)).unsqueeze(1)).T @ x + ridge  # (2, 2)
        step = torch.linalg.solve(hess, grad)
        w = w + step
        if step.abs().max() < 1e-10:
            break
    return float(torch.sigmoid(w[0]))


def win_rate(judge: Judge, prompts: Sequence[Any], candidate: Sequence[str],
             baseline: Sequence[str], seed: int = 0,
             length: Callable[[str], float] = lambda t: float(len(t.split()))) -> WinRate:
    """Judge each (candidate, baseline) pair with the two answers in a seeded random order
    (an :class:`~dpokit.eval.judges.LLMJudge` asks for all of them at once)."""
    rng = random.Random(seed)
    rows = list(zip(prompts, candidate, baseline, strict=True))
    first = [rng.random() < 0.5 for _ in rows]  # the candidate shown first
    items = [(p, c, b) if f else (p, b, c) for (p, c, b), f in zip(rows, first, strict=True)]
    verdicts = (judge.compare(items) if isinstance(judge, LLMJudge)
                else [judge(*item) for item in items])
    outcomes = [v if f else 1.0 - v for v, f in zip(verdicts, first, strict=True)]
    diffs = [length(c) - length(b) for _, c, b in rows]
    wins = sum(o == 1.0 for o in outcomes)
    ties = sum(o == 0.5 for o in outcomes)
    est = Estimate.of(outcomes)
    controlled = _fit_length_controlled(outcomes, diffs) if outcomes else 0.5
    return WinRate(wins, ties, len(outcomes) - wins - ties, est.mean, est.stderr, controlled)
