"""A diffusers denoiser (UNet or DiT) as a :class:`~dpokit.core.Policy` for Diffusion-DPO
(Wallace et al. 2023).

A sample's score is minus half its denoising error at the batch's noise and timestep,
``s = -1/2 * mean((eps_theta(x_t, t, c) - eps)^2)``, x_t the noised image (or latent). With
these scores the registered ``sigmoid`` loss is Diffusion-DPO's (their Eq. 14, T * omega(lambda_t)
folded into beta, as their code does):

    -log sigmoid(-beta/2 * [(e_w - e_w_ref) - (e_l - e_l_ref)])

so the generic preference objective, loop and reference service train it unchanged. The
noise and timestep come with the batch (:mod:`.data`), shared by a pair's two images and by
the policy and reference passes; scores are random across batches, so the capabilities
declare ``deterministic=False`` and the reference is computed beside every step.

    >>> policy = DiffusionPolicy(unet, scheduler, encoder, reference="adapter")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ...core.modules import eval_mode
from ...core.protocols import BasePolicy, PolicyCapabilities, PolicyDescription
from ...core.types import SequenceScores

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # LoRA's default targets (diffusers' names)


def is_flow(scheduler) -> bool:
    """Whether a schedule is flow matching (SD3's ``FlowMatchEulerDiscreteScheduler``)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def apply_lora(unet: nn.Module, r: int = 8, alpha: int = 8,
               target_modules: list[str] | None = None, seed: int = 0) -> nn.Module:
    """A peft LoRA adapter on the denoiser's attention projections (the base frozen)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(unet, LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian",
                                           target_modules=target_modules or ATTENTION))


def unet_call(model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
              condition: torch.Tensor) -> torch.Tensor:
    """A diffusers ``UNet2DConditionModel``'s call: (noisy (S, C, H, W), timesteps (S,),
    condition (S, L, D)) -> predicted noise (S, C, H, W). A transformer denoiser (DiT, SD3)
    names its inputs differently and passes its own (e.g. ``lambda m, x, t, c:
    m(hidden_states=x, timestep=t, encoder_hidden_states=c).sample``)."""
    return model(noisy, timesteps, encoder_hidden_states=condition).sample


Denoise = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]  # condition


def image_geometry(unet: nn.Module, vae=None) -> tuple[int, tuple[int, int, int]]:
    """(the image side a denoiser was made for, the (C, H, W) shape of what it noises): its
    sample size, times its VAE's downscaling for a latent model."""
    config = (unet.get_base_model() if is_peft(unet) else unet).config
    side = config.sample_size
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return side * scale, (config.in_channels, side, side)


class _Denoise(nn.Module):
    """The forward accelerate wraps: noised images -> predicted noise."""

    def __init__(self, unet: nn.Module, encoder: nn.Module, call: Denoise):
        super().__init__()
        self.unet, self.encoder, self._call = unet, encoder, call

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: list[str]):
        condition = self.encoder(prompts)  # (S, L, D)
        return self._call(self.unet, noisy, timesteps, condition)


class DiffusionPolicy(BasePolicy):
    """``unet``: a diffusers ``UNet2DConditionModel`` (or any denoiser with its call
    signature), optionally peft-wrapped; ``scheduler``: its noise schedule
    (``DDPMScheduler``); ``encoder``: prompts -> (E, L, D) conditioning; ``vae``: for latent
    models, images are encoded (the mean latent, times its scaling factor) before noising.
    reference: ``"adapter"`` (LoRA: the base with the adapter off), ``"copy"`` (a frozen copy of
    ``reference_model``, by default of ``unet`` as given) or ``"none"``.
    denoise: how the denoiser is called (:func:`unet_call`; a DiT passes its own).
    source: the diffusers pipeline folder it was loaded from; then ``save_pretrained`` writes
    what diffusers loads onto that pipeline (:func:`save_for_diffusers`)."""

    def __init__(self, unet: nn.Module, scheduler, encoder: nn.Module,
                 reference: Literal["adapter", "copy", "none"] = "adapter", vae=None,
                 denoise: Denoise = unet_call, source: str | None = None,
                 reference_model: nn.Module | None = None, pipeline_kind: str | None = None):
        if reference == "adapter" and not is_peft(unet):
            raise ValueError("reference='adapter' needs a LoRA (peft) denoiser; use 'copy'")
        self.unet, self.scheduler, self.encoder, self.vae = unet, scheduler, encoder, vae
        self.reference_mode, self.denoise, self.source = reference, denoise, source
        self.pipeline_kind = pipeline_kind
        self.scorer: nn.Module = _Denoise(unet, encoder, denoise)
        self.reference_scorer = None
        if reference == "copy":
            frozen = copy.deepcopy(reference_model if reference_model is not None else unet)
            self.reference_scorer = _Denoise(frozen.requires_grad_(False).eval(), encoder,
                                             denoise)
        self.capabilities = PolicyCapabilities(reference=reference, deterministic=False,
                                               generation=True)

    @property
    def resolution(self) -> int:
        """The side images are resized to."""
        return image_geometry(self.unet, self.vae)[0]

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) of what is noised (latents for a latent model)."""
        return image_geometry(self.unet, self.vae)[1]

    # --- scores ----------------------------------------------------------------------------
    def _targets(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, ...) noised inputs, what the denoiser should predict, and (S,) the timesteps it
        is told: each pair's draw used for its chosen and its rejected sample (S = 2E), or each
        image's (S = E). DDPM-style schedules: ``x_t = add_noise(x0, eps, t)``, the target the
        noise (or the velocity, for v-prediction); flow matching (SD3):
        ``x_t = (1 - sigma) x0 + sigma eps`` at the draw's sigma, the target ``eps - x0``."""
        x0 = batch.images
        if self.vae is not None:
            if batch.latents is None:  # once per batch: the reference pass reuses it
                batch.latents = self.to_latents(x0)  # (S, C', H', W')
            x0 = batch.latents
        if batch.noise.shape[1:] != x0.shape[1:]:
            raise ValueError(f"the batch's noise {tuple(batch.noise.shape[1:])} does not match "
                             f"what is noised {tuple(x0.shape[1:])}: give DiffusionPairCollator "
                             f"noise_shape={tuple(x0.shape[1:])}")
        copies = len(x0) // len(batch.noise)  # 2: a pair's two images, 1: single images
        noise = batch.noise.repeat(copies, *[1] * (batch.noise.dim() - 1))  # (S, C, H, W)
        timesteps = batch.timesteps.repeat(copies)  # (S,) indices into the schedule
        if is_flow(self.scheduler):
            sigma = self.scheduler.sigmas.to(x0.device)[timesteps].view(-1, 1, 1, 1)  # (S,1,1,1)
            noisy = (1 - sigma) * x0 + sigma * noise  # (S, C, H, W)
            return noisy, noise - x0, self.scheduler.timesteps.to(x0.device)[timesteps]
        target = (self.scheduler.get_velocity(x0, noise, timesteps)
                  if self.scheduler.config.prediction_type == "v_prediction" else noise)
        return self.scheduler.add_noise(x0, noise, timesteps), target, timesteps

    def _scores(self, scorer: nn.Module, batch) -> SequenceScores:
        noisy, target, timesteps = self._targets(batch)
        prompts = batch.prompts * (len(noisy) // len(batch.prompts))
        predicted = scorer(noisy, timesteps, prompts)  # (S, C, H, W)
        error = (predicted.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (S,)
        return SequenceScores(-0.5 * error, torch.ones_like(error, dtype=torch.long))

    def logps(self, batch, *, sampling_norm: bool = False) -> SequenceScores:
        """(S,) ``-1/2 * denoising error`` of the chosen then the rejected samples (or of
        each image of an SFT batch)."""
        return self._scores(self.scorer, batch)

    @torch.no_grad()
    def reference_logps(self, batch) -> SequenceScores:
        if self.reference_mode == "copy":
            return self._scores(self.reference_scorer, batch)
        if self.reference_mode == "none":
            raise RuntimeError("this policy has no reference (reference='none')")
        with eval_mode(self.unet), self.unet.disable_adapter():
            return self._scores(self.scorer, batch)

    # --- the rest of the interface ---------------------------------------------------------
    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.scorer.named_parameters() if p.requires_grad}

    def prepare(self, accelerator) -> list[nn.Module]:
        self.scorer = accelerator.prepare(self.scorer)
        if self.reference_scorer is not None:
            self.reference_scorer.to(accelerator.device)
        if self.vae is not None:
            self.vae.to(accelerator.device)
        return [self.scorer]

    def train(self, mode: bool = True) -> None:
        self.scorer.train(mode)

    def describe(self) -> PolicyDescription:
        """A LoRA adapter on the denoiser it was loaded from, or the whole denoiser."""
        base = self.unet.get_base_model() if is_peft(self.unet) else self.unet
        name = self.source or getattr(getattr(base, "config", None), "_name_or_path", "") or \
            type(base).__name__
        adapter = is_peft(self.unet)
        return PolicyDescription("diffusion", name, "adapter" if adapter else "full",
                                 "peft" if adapter else "diffusers")

    def save_pretrained(self, directory: str | Path | None) -> None:
        """The denoiser (or its LoRA adapter) in the diffusers / peft format, and the
        conditioning encoder's weights; for a pipeline folder's denoiser, what diffusers loads
        onto that pipeline."""
        if directory is None:
            return
        if self.source is not None:  # the pipeline's own encoder is frozen: the UNet only
            save_for_diffusers(self.unet, directory, self.pipeline_kind)
            return
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory)
        torch.save(self.encoder.state_dict(), Path(directory) / "encoder.pt")

    @torch.no_grad()
    def generate(self, prompts: list[str], steps: int = 25, seed: int = 0,
                 reference: bool = False, **_) -> torch.Tensor:
        """DDIM samples (E, C, H, W) in [-1, 1] for ``prompts`` (``reference``: from the
        frozen reference), the same initial noise for the same ``seed``."""
        from ...core.packages import need

        need("diffusers", "diffusion", "image generation with a diffusers denoiser")
        from diffusers import DDIMScheduler

        kind = type(self.scheduler) if is_flow(self.scheduler) else DDIMScheduler
        sampler = kind.from_config(self.scheduler.config)  # flow: Euler steps, else DDIM
        sampler.set_timesteps(steps)
        unet = self.unet
        config = (unet.get_base_model() if is_peft(unet) else unet).config
        shape = (len(prompts), config.in_channels, config.sample_size, config.sample_size)
        device = next(unet.parameters()).device
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
        condition = self.encoder(prompts)
        with eval_mode(unet), (unet.disable_adapter() if reference and is_peft(unet)
                                else _nothing()):
            model = (self.reference_scorer.unet if reference and self.reference_scorer
                     else unet)
            for t in sampler.timesteps:
                eps = self.denoise(model, x, t.expand(x.shape[0]).to(device), condition)
                x = sampler.step(eps, t, x).prev_sample
        return self.to_images(x).clamp(-1, 1)

    @torch.no_grad()
    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(S, 3, H, W) images in [-1, 1] -> what the denoiser noises: the VAE's latent mean,
        shifted then scaled, ``(z - shift_factor) * scaling_factor`` (diffusers' training
        scripts); the images themselves without a VAE."""
        if self.vae is None:
            return images
        shift = self.vae.config.get("shift_factor") or 0.0
        return (self.vae.encode(images).latent_dist.mean - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_latents` (diffusers' pipelines' decode):
        ``vae.decode(latents / scaling_factor + shift_factor)``."""
        if self.vae is None:
            return latents
        shift = self.vae.config.get("shift_factor") or 0.0
        return self.vae.decode(latents / self.vae.config.scaling_factor + shift).sample


def _takes_metadata(pipeline, part: str) -> bool:
    """Whether this diffusers' ``save_lora_weights`` writes adapter metadata (0.34 on)."""
    import inspect

    return part.replace("_layers", "_adapter_metadata") in \
        inspect.signature(pipeline.save_lora_weights).parameters


def _folded(unet: nn.Module, layers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``layers`` with each module's scale (alpha / r, rsLoRA's and patterns' included) folded
    into its lora_B: what a diffusers without adapter metadata applies at scale 1."""
    adapter = unet.active_adapter
    folded = dict(layers)
    for name, module in unet.named_modules():
        scaling = getattr(module, "scaling", None)
        if not isinstance(scaling, dict) or adapter not in scaling:
            continue
        for suffix in ("weight", "bias"):
            key = f"{name.removeprefix('base_model.model.')}.lora_B.{suffix}"
            if key in folded:
                folded[key] = folded[key] * scaling[adapter]
    return folded


def save_for_diffusers(unet: nn.Module, directory: str | Path,
                       pipeline_kind: str | None = None) -> Path:
    """The trained LoRA adapter in diffusers' LoRA format (``pytorch_lora_weights.safetensors``,
    what ``pipeline.load_lora_weights(directory)`` reads) and peft's (what
    :func:`.pipeline.load_trained` reads), or the whole trained denoiser under
    ``directory/unet`` (``directory/transformer`` for SD3: what ``from_pretrained(directory,
    subfolder=...)`` reads). The diffusers file carries the adapter's config (its alpha) as
    diffusers' ``lora_adapter_metadata``, so diffusers applies it at alpha / r as peft does,
    not at 1 (issue 44); a diffusers too old to read metadata gets alpha / r folded into
    lora_B instead. The peft files keep the adapter as trained."""
    import diffusers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    transformer = pipeline_kind == "StableDiffusion3Pipeline"
    if is_peft(unet):
        from peft.utils import get_peft_model_state_dict

        layers = {name.removeprefix("base_model.model."): value
                  for name, value in get_peft_model_state_dict(unet).items()}
        pipeline = getattr(diffusers, pipeline_kind or "StableDiffusionPipeline")
        part = "transformer_lora_layers" if transformer else "unet_lora_layers"
        if _takes_metadata(pipeline, part):
            config = unet.peft_config[unet.active_adapter].to_dict()
            extra = {part.replace("_layers", "_adapter_metadata"): config}
        else:
            layers, extra = _folded(unet, layers), {}
        pipeline.save_lora_weights(directory, **{part: layers}, **extra, safe_serialization=True)
        unet.save_pretrained(directory)  # adapter_config.json + adapter_model.safetensors
    else:
        unet.save_pretrained(directory / ("transformer" if transformer else "unet"))
    return directory


@contextmanager
def _nothing():
    yield
