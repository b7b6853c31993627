"""Supervised fine-tuning of an image model (``dpokit sft model=<pipeline folder>``): the
plain diffusion loss, each image's denoising error at its own noise and timestep,
``mean((eps_theta(x_t, t, c) - eps)^2)`` (or the velocity's, for a v-prediction model),
averaged over the images of the optimizer step.

    >>> DenoisingObjective().needs_reference
    False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...core.protocols import ObjectiveOutput, StatelessObjective
from ...core.types import MetricSums


@dataclass
class DenoisingObjective(StatelessObjective):
    """Per image: its denoising error (the policy scores ``-1/2`` of it); the unit is the
    image, so accumulation and data-parallel splits average over the step's images."""

    name: str = "denoising"
    needs_reference: bool = False
    batch_level: bool = False
    pools_batch_stats: bool = True
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None

    def units(self, batch) -> int:
        return len(batch.prompts)

    def __call__(self, policy, batch, ref_logps=None) -> ObjectiveOutput:
        scores = policy.logps(batch)  # (E,) -1/2 * error
        return ObjectiveOutput(-2.0 * scores.logps.float(), MetricSums())  # (E,) the error
