"""`dpokit eval` of an image generator (a Diffusion-DPO run's ``final/`` or a pipeline folder):
Diffusion-DPO's implicit accuracy on held-out image pairs, and, on held-out prompts, the
reward of its samples (an image reward ``module:function(images, prompts) -> scores``), their
diversity and a grid of them as a PNG.

Held-out pairs are scored at a fixed noise and timestep per pair (seeded by the pair), so the
figures are the same at every call; diversity is the mean pixel distance between two samples
of one prompt (0: the same image every time).

    >>> diversity(torch.zeros(2, 2, 3, 4, 4))
    0.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.catalogue import Metric, declare
from ..data.io import Record
from ..losses import LossParams
from ..objectives import PreferenceObjective
from ..policies.diffusion import DiffusionPairCollator, DiffusionPolicy, build_image_pairs
from ..train.metrics import objective_metrics

ImageReward = Callable[[torch.Tensor, list[str]], Any]  # (N, 3, H, W) in [-1, 1] -> (N,)

declare(Metric("img/reward", "reward of own samples", "{:+.4f}", headline=True),
        Metric("img/diversity", "mean pixel distance within a prompt", "{:.4f}"),
        Metric("img/reference_reward", "reward of the reference's samples", "{:+.4f}"))


def diversity(samples: torch.Tensor) -> float:
    """Mean L2 distance (per pixel value) between the K samples of each prompt,
    ``samples`` (P, K, C, H, W); 0 when K < 2."""
    p, k = samples.shape[:2]
    if k < 2:
        return 0.0
    flat = samples.flatten(2)  # (P, K, D)
    distances = torch.cdist(flat, flat) / flat.shape[-1] ** 0.5  # (P, K, K)
    return float(distances.sum() / (p * k * (k - 1)))


@torch.no_grad()
def image_pair_metrics(policy: DiffusionPolicy, records: Sequence[Record], beta: float,
                       batch_size: int = 8) -> dict[str, float]:
    """Diffusion-DPO's loss, implicit-reward accuracy and margin on held-out pairs against the
    policy's reference, each pair at its own seeded noise and timestep."""
    if not policy.capabilities.has_reference:
        raise ValueError("held-out pair figures compare with a reference: evaluate a trained "
                         "adapter (final/ of a LoRA run), not a pipeline folder")
    pairs = build_image_pairs(list(records), policy.resolution).items
    collate = DiffusionPairCollator(policy.scheduler.config.num_train_timesteps,
                                    noise_shape=policy.noise_shape)
    objective = PreferenceObjective.from_names("sigmoid", None, LossParams(beta=beta))
    objective.train(False)
    batches = (collate(pairs[i:i + batch_size]) for i in range(0, len(pairs), batch_size))

    def forward(batch):
        return objective(policy, batch, policy.reference_logps(batch).logps.float())

    policy.train(False)
    return {f"eval/{k}": v for k, v in objective_metrics(objective, batches, forward).items()}


@torch.no_grad()
def sample_metrics(policy: DiffusionPolicy, prompts: list[str], reward: ImageReward | None,
                   num_samples: int = 4, steps: int = 25, seed: int = 0,
                   grid: str | Path | None = None) -> dict[str, float]:
    """``num_samples`` DDIM samples per prompt (seeds ``seed``, ``seed + 1``, ...): their mean
    reward and the reference's on the same seeds, their diversity; ``grid``: a PNG, one row
    per prompt."""
    policy.train(False)
    samples = torch.stack([policy.generate(prompts, steps=steps, seed=seed + k)
                           for k in range(num_samples)], 1)  # (P, K, C, H, W)
    flat_prompts = [p for p in prompts for _ in range(num_samples)]
    out = {"eval/img/diversity": diversity(samples)}
    if reward is not None:
        out["eval/img/reward"] = float(torch.as_tensor(
            reward(samples.flatten(0, 1), flat_prompts), dtype=torch.float64).mean())
        if policy.capabilities.has_reference:
            reference = torch.stack([policy.generate(prompts, steps=steps, seed=seed + k,
                                                     reference=True)
                                     for k in range(num_samples)], 1)
            out["eval/img/reference_reward"] = float(torch.as_tensor(
                reward(reference.flatten(0, 1), flat_prompts), dtype=torch.float64).mean())
    if grid is not None:
        save_grid(samples, grid)
    return out


def save_grid(samples: torch.Tensor, path: str | Path) -> Path:
    """(P, K, C, H, W) images in [-1, 1] as one PNG: a row per prompt."""
    from ..core.packages import need

    need("PIL", "vision", "an image grid")
    from PIL import Image

    p, k, _, h, w = samples.shape
    pixels = ((samples.clamp(-1, 1) + 1) * 127.5).round().byte()  # (P, K, C, H, W)
    canvas = pixels.permute(0, 3, 1, 4, 2).reshape(p * h, k * w, -1)  # (P·H, K·W, C)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.numpy()).save(path)
    return path
