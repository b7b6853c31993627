"""Supervised fine-tuning as an objective: the negative log-likelihood of the scored tokens
(completion tokens by default), averaged over every scored token of the optimizer step.

Normalizing by the step's global token count (not per sequence, not per micro-batch) makes
accumulation, packing and data-parallel splits give the gradient of one big batch.

    >>> SFTObjective().needs_reference
    False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.catalogue import Metric, declare
from ..core.protocols import ObjectiveOutput, Policy, StatelessObjective
from ..core.types import MetricSums

declare(Metric("tokens_per_sequence", "scored tokens per sequence", "{:.1f}"))


@dataclass
class SFTObjective(StatelessObjective):
    name: str = "sft"
    needs_reference: bool = False
    batch_level: bool = False
    pools_batch_stats: bool = True
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None

    def units(self, batch: Any) -> int:
        """Losses are averaged over scored tokens."""
        return int(batch.score_target.shape[0])

    def __call__(
        self, policy: Policy, batch: Any, ref_logps: torch.Tensor | None
    ) -> ObjectiveOutput:
        scores = policy.logps(batch)
        nll = -scores.logps.float()  # (S,) summed NLL per sequence
        metrics = MetricSums()  # the loop's "loss" is the NLL per scored token
        metrics.add("tokens_per_sequence", scores.tokens.float())
        metrics.merge(scores.token_metrics())
        return ObjectiveOutput(scores.with_aux(nll, scores.tokens.float()), metrics)
