"""One-step image generators (noise + prompt -> image in one forward, as SD-Turbo) as
policies for DrPO: no likelihood, so no ``logps``; the DrPO objective asks for images.

    >>> g = OneStepGenerator(noise_dim=8, condition_dim=4, size=16)
    >>> g(torch.randn(2, 8), torch.randn(2, 3, 4)).shape
    torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ...core.protocols import BasePolicy, PolicyCapabilities, PolicyDescription
from ...core.types import SequenceScores


class OneStepGenerator(nn.Module):
    """A small conditional convolutional generator: noise (E, Z) and conditioning (E, L, D)
    (mean-pooled) -> (E, 3, size, size) in [-1, 1]; ``size`` is 4 * 2^k."""

    def __init__(self, noise_dim: int = 32, condition_dim: int = 32, size: int = 32,
                 width: int = 64):
        super().__init__()
        self.noise_dim, self.width = noise_dim, width
        self.stem = nn.Sequential(nn.Linear(noise_dim + condition_dim, width * 16), nn.SiLU())
        blocks, side = [], 4
        while side < size:
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1),
                       nn.GroupNorm(8, width), nn.SiLU()]
            side *= 2
        self.body = nn.Sequential(*blocks, nn.Conv2d(width, 3, 3, padding=1), nn.Tanh())

    def forward(self, noise: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.stem(torch.cat([noise, condition.mean(1)], dim=-1))  # (E, 16 W)
        return self.body(h.view(-1, self.width, 4, 4))  # (E, 3, size, size)


class _Generate(nn.Module):
    """The forward accelerate wraps: (prompts, noise) -> images."""

    def __init__(self, generator: nn.Module, encoder: nn.Module):
        super().__init__()
        self.generator, self.encoder = generator, encoder

    def forward(self, prompts: list[str], noise: torch.Tensor) -> torch.Tensor:
        return self.generator(noise, self.encoder(prompts))


class GeneratorPolicy(BasePolicy):
    """A one-step generator and its prompt encoder; the reference is a frozen copy of both
    (the base generator DrPO's reference drift holds the policy near). The encoder is trained
    with the generator unless ``train_encoder=False``."""

    def __init__(self, generator: nn.Module, encoder: nn.Module, train_encoder: bool = False):
        self.noise_dim = generator.noise_dim
        self.scorer: nn.Module = _Generate(generator, encoder)
        self.reference = _Generate(copy.deepcopy(generator), copy.deepcopy(encoder))
        self.reference.requires_grad_(False).eval()
        encoder.requires_grad_(train_encoder)
        self.capabilities = PolicyCapabilities(reference="copy", deterministic=False,
                                               generation=True)

    def images(self, prompts: list[str], noise: torch.Tensor) -> torch.Tensor:
        """(E, 3, H, W) images of the trained generator, differentiable."""
        return self.scorer(prompts, noise)

    @torch.no_grad()
    def reference_images(self, prompts: list[str], noise: torch.Tensor) -> torch.Tensor:
        return self.reference(prompts, noise.to(next(self.reference.parameters()).device))

    def logps(self, batch, *, sampling_norm: bool = False) -> SequenceScores:
        raise NotImplementedError("a one-step generator has no likelihood: train it with the "
                                  "DrPO objective (images, not log-probs)")

    reference_logps = logps

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.scorer.named_parameters() if p.requires_grad}

    def prepare(self, accelerator) -> list[nn.Module]:
        self.scorer = accelerator.prepare(self.scorer)
        self.reference.to(accelerator.device)
        return [self.scorer]

    def train(self, mode: bool = True) -> None:
        self.scorer.train(mode)

    def describe(self) -> PolicyDescription:
        generator = self.reference.generator  # (the scorer may be wrapped by DDP)
        return PolicyDescription("one_step_generator", f"{type(generator).__name__} "
                                 f"(noise dim {self.noise_dim})")

    def save_pretrained(self, directory: str | Path | None) -> None:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in self.scorer.state_dict().items()},
                       Path(directory) / "generator.pt")

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, reference: bool = False,
                 **_) -> torch.Tensor:
        """Images for ``prompts`` from seeded noise (the same noise for the same seed)."""
        module = self.reference if reference else self.scorer
        was = module.training
        module.eval()
        noise = torch.randn(len(prompts), self.noise_dim,
                            generator=torch.Generator().manual_seed(seed))
        out = module(prompts, noise.to(next(module.parameters()).device))
        module.train(was)
        return out
