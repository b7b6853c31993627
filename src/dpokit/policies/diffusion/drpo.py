"""DrPO for one-step generators (Jiang, Wen and Liu 2026) on the generic loop: an online
source that samples the current generator every step and ranks the samples with a black-box
reward, and an objective that drifts the generator's features toward the best and away from
the worst samples (:mod:`dpokit.objectives.drift`), held near the frozen base generator by
the reference drift.

Each step, per prompt: K noises (seeded by ``(seed, step, rank)``); K images from the current
generator, without gradients; rewards z-scored within the prompt; the top ``num_positive`` and
bottom ``num_negative`` images' features are the positives and negatives; the frozen base
generator's images from the same noises give the reference features. The objective runs the
generator again on the same noises, with gradients, and takes the drift loss of its features.

The settings are the config's ``drpo`` section (:class:`~dpokit.config.schema.DrPOConfig`).

    >>> DrPOConfig().samples_per_prompt
    8
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ...config.schema import DrPOConfig
from ...core.protocols import ObjectiveOutput, StatelessObjective
from ...core.types import MetricSums
from ...objectives.drift import drift_loss
from ...train.sources import StepShares

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]  # images (N,3,H,W), prompts -> (N,)
FeatureMap = Callable[[torch.Tensor], torch.Tensor]  # images (N,3,H,W) -> (N, D), frozen


@dataclass
class DriftBatch:
    """P prompts, K samples each.

    noise: (P, K, Z). positive: (P, num_positive, D), negative: (P, num_negative, D),
    reference: (P, K, D) frozen features. rewards: (P, K) raw; spread: (P,) 1.0 where the K
    rewards differ (a prompt with equal rewards carries no preference and only the reference
    drift).
    """

    example_index: torch.Tensor
    prompts: list[str]
    noise: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    reference: torch.Tensor
    rewards: torch.Tensor
    spread: torch.Tensor
    num_tokens: int = 0
    ref_logps: torch.Tensor | None = None

    def to(self, device) -> DriftBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return DriftBatch(**moved)


def zscore(rewards: torch.Tensor) -> torch.Tensor:
    """(P, K) -> rewards standardized within each prompt (0 where they are all equal)."""
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(std > 1e-8, (rewards - rewards.mean(1, keepdim=True)) / std.clamp_min(1e-8),
                       torch.zeros_like(rewards))


@dataclass
class DrPOSource(StepShares):
    """The online source: ``batch_size`` prompts per micro-batch, drawn (seeded by the step)
    from ``prompts``; samples, rewards and features as the module docstring says."""

    prompts: Sequence[str]
    reward: RewardFn
    features: FeatureMap
    settings: DrPOConfig
    batch_size: int
    grad_accum_steps: int = 1
    seed: int = 0
    world: int = 1
    rank: int = 0
    steps_per_epoch: int | None = None
    precomputable: bool = False
    _last: MetricSums = field(default_factory=MetricSums)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()

    @torch.no_grad()
    def _batch(self, policy, step: int, k: int) -> DriftBatch:
        s = self.settings
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 1009 + self.rank)
                                          * 101 + k)
        picks = torch.randint(0, len(self.prompts), (self.batch_size,), generator=g)
        prompts = [self.prompts[i] for i in picks.tolist()]
        p, n = len(prompts), s.samples_per_prompt
        noise = torch.randn(p, n, policy.noise_dim, generator=g)  # (P, K, Z)
        flat_prompts = [q for q in prompts for _ in range(n)]
        device = next(iter(policy.named_trainable_parameters().values())).device
        images = policy.images(flat_prompts, noise.flatten(0, 1).to(device))  # (P K, 3, H, W)
        rewards = self.reward(images, flat_prompts).float().view(p, n).cpu()  # (P, K)
        z = zscore(rewards)
        order = z.argsort(dim=1, descending=True, stable=True)  # (P, K)
        feats = self.features(images).float().view(p, n, -1).cpu()  # (P, K, D)
        top, bottom = order[:, :s.num_positive], order[:, n - s.num_negative:]
        positive = feats.gather(1, top[..., None].expand(-1, -1, feats.shape[-1]))
        negative = feats.gather(1, bottom[..., None].expand(-1, -1, feats.shape[-1]))
        reference = self.features(policy.reference_images(flat_prompts, noise.flatten(0, 1)))
        spread = (rewards.std(1, unbiased=False) > 1e-8).float()  # (P,)
        self._last.add("samples/reward", rewards.flatten())
        self._last.add("samples/reward_best", rewards.max(1).values)
        self._last.add("samples/reward_worst", rewards.min(1).values)
        self._last.add("samples/prompts_without_spread", 1 - spread)
        return DriftBatch(picks, prompts, noise, positive, negative,
                          reference.float().view(p, n, -1).cpu(), rewards, spread)

    def micro_batches(self, step: int, policy) -> list[DriftBatch]:
        self._last = MetricSums()
        return [self._batch(policy, step, k) for k in range(self.grad_accum_steps)]

    def step_metrics(self) -> dict[str, float]:
        return self._last.means()

    def state_dict(self) -> dict:
        return {}  # a pure function of (seed, step, rank) and the policy

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class DrPOObjective(StatelessObjective):
    """Per prompt: the preference drift of the generator's K features plus
    ``reference_weight`` times the reference drift (their paper's dual drift loss, with the
    official code's defaults: weights 3000, radii 0.02 / 0.05 / 0.2 for both, 0.2)."""

    features: FeatureMap
    settings: DrPOConfig = field(default_factory=DrPOConfig)
    name: str = "drpo"
    needs_reference: bool = False  # the reference features come with the batch
    batch_level: bool = False
    pools_batch_stats: bool = True
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None

    def units(self, batch: DriftBatch) -> int:
        return len(batch.prompts)

    def __call__(self, policy, batch: DriftBatch, ref_logps=None) -> ObjectiveOutput:
        s = self.settings
        p, n = batch.noise.shape[:2]
        images = policy.images([q for q in batch.prompts for _ in range(n)],
                               batch.noise.flatten(0, 1))  # (P K, 3, H, W), differentiable
        generated = self.features(images).view(p, n, -1)  # (P, K, D)
        field = {"kernel": s.drift_kernel, "own_samples_negative": s.own_samples_negative,
                 "positive_weight": s.positive_weight, "negative_weight": s.negative_weight}
        preference = drift_loss(generated, batch.positive, batch.negative,
                                radii=s.drift_radii, **field)  # (P,)
        reference = drift_loss(generated, batch.reference, generated.detach(),
                               radii=s.reference_radii, mask_negative_self=True,
                               **field)  # (P,)
        losses = preference * batch.spread + s.reference_weight * reference  # (P,)
        metrics = MetricSums()
        metrics.add("drift/preference", preference.detach())
        metrics.add("drift/reference", reference.detach())
        metrics.add("drift/feature_distance_to_reference",
                    (generated.detach() - batch.reference).norm(dim=-1).mean(1))
        return ObjectiveOutput(losses, metrics)
