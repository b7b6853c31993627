"""A diffusers text-to-image pipeline folder as the parts Diffusion-DPO trains and scores with,
and the trained adapter saved where diffusers loads it.

A Stable Diffusion 1.x / 2.x folder (``model_index.json``; ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) gives a UNet, a VAE whose latents are
noised, a frozen CLIP text encoder and the noise schedule. SDXL (a second text encoder and
added time ids) and SD3-style transformer pipelines are refused by name for now.

    >>> is_pipeline_folder("src")
    False
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.packages import need
from .policy import image_geometry

SUPPORTED = ("StableDiffusionPipeline",)


def is_pipeline_folder(name: str) -> bool:
    """Whether ``name`` is a diffusers pipeline folder (it has a ``model_index.json``)."""
    return (Path(name) / "model_index.json").is_file()


@dataclass
class PipelineParts:
    """unet: the denoiser; vae: its latent autoencoder; tokenizer, text_encoder: the prompt
    conditioning (frozen); scheduler: the training noise schedule (DDPM); resolution: the image
    side the UNet was made for (its sample size times the VAE's downscaling)."""

    unet: nn.Module
    vae: nn.Module
    tokenizer: Any
    text_encoder: nn.Module
    scheduler: Any
    resolution: int
    source: str

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents of a ``resolution`` image."""
        return image_geometry(self.unet, self.vae)[1]


def load_pipeline(folder: str, dtype: torch.dtype = torch.float32) -> PipelineParts:
    """The parts of a Stable Diffusion 1.x / 2.x pipeline folder (a one-line error for any
    other pipeline class, naming it)."""
    need("diffusers", "diffusion", "training a diffusers pipeline")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    index = json.loads((Path(folder) / "model_index.json").read_text())
    kind = index.get("_class_name", "")
    if kind not in SUPPORTED:
        raise ValueError(f"{folder}: a {kind or 'pipeline without _class_name'}; dpokit trains "
                         f"{', '.join(SUPPORTED)} folders (UNet, VAE, one CLIP text encoder) so "
                         f"far")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    return PipelineParts(
        unet, vae.requires_grad_(False).eval(),
        AutoTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
        DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        image_geometry(unet, vae)[0], folder)


def load_trained(folder: str, pipeline: str, kind: str, dtype: torch.dtype = torch.float32):
    """A :class:`~.policy.DiffusionPolicy` to evaluate or sample from: ``folder`` a trained
    run's ``final/`` (``kind`` ``adapter``: LoRA on ``pipeline``'s UNet, the reference the UNet
    with it off; ``full``: its ``unet/``, no reference) or a pipeline folder itself (no
    reference)."""
    from diffusers import UNet2DConditionModel

    from .conditioning import CLIPPromptEncoder
    from .policy import DiffusionPolicy

    parts = load_pipeline(pipeline, dtype)
    unet, reference = parts.unet, "none"
    if kind == "adapter":
        from peft import PeftModel

        unet, reference = PeftModel.from_pretrained(parts.unet, folder), "adapter"
    elif Path(folder).resolve() != Path(pipeline).resolve():
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    return DiffusionPolicy(unet.eval(), parts.scheduler,
                           CLIPPromptEncoder(parts.tokenizer, parts.text_encoder),
                           reference=reference, vae=parts.vae, source=pipeline)
