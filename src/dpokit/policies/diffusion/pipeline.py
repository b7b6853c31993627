"""A diffusers text-to-image pipeline folder as the parts Diffusion-DPO trains and scores with,
and the trained adapter saved where diffusers loads it.

A Stable Diffusion 1.x / 2.x folder (``model_index.json``; ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) gives a UNet, a VAE whose latents are
noised, a frozen CLIP text encoder and the noise schedule; an SDXL folder also a second text
encoder (``text_encoder_2/``, ``tokenizer_2/``), whose pooled embedding and the added time
ids its UNet reads too. SD3-style transformer pipelines (flow matching) are refused by name.

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
from .conditioning import CLIPPromptEncoder, SDXLPromptEncoder, sdxl_unet_call
from .policy import Denoise, DiffusionPolicy, image_geometry, unet_call

SUPPORTED = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def is_pipeline_folder(name: str) -> bool:
    """Whether ``name`` is a diffusers pipeline folder (it has a ``model_index.json``)."""
    return (Path(name) / "model_index.json").is_file()


@dataclass
class PipelineParts:
    """unet: the denoiser; vae: its latent autoencoder; tokenizers, text_encoders: the prompt
    conditioning (frozen; two for SDXL); scheduler: the training noise schedule (DDPM);
    resolution: the image side the UNet was made for (its sample size times the VAE's
    downscaling); kind: the pipeline class."""

    unet: nn.Module
    vae: nn.Module
    tokenizers: list[Any]
    text_encoders: list[nn.Module]
    scheduler: Any
    resolution: int
    source: str
    kind: str = "StableDiffusionPipeline"

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents of a ``resolution`` image."""
        return image_geometry(self.unet, self.vae)[1]

    def conditioning(self) -> tuple[nn.Module, Denoise]:
        """The prompt encoder and the denoiser call of this kind of pipeline."""
        if self.kind == "StableDiffusionXLPipeline":
            return (SDXLPromptEncoder(self.tokenizers, self.text_encoders, self.resolution),
                    sdxl_unet_call)
        return CLIPPromptEncoder(self.tokenizer, self.text_encoders[0]), unet_call

    def policy(self, unet: nn.Module, reference: str,
               reference_model: nn.Module | None = None) -> DiffusionPolicy:
        """A :class:`~.policy.DiffusionPolicy` of ``unet`` (this pipeline's, trained or with
        an adapter) with this pipeline's conditioning, VAE and schedule."""
        encoder, denoise = self.conditioning()
        return DiffusionPolicy(unet, self.scheduler, encoder, reference=reference,
                               vae=self.vae, denoise=denoise, source=self.source,
                               reference_model=reference_model)


def load_pipeline(folder: str, dtype: torch.dtype = torch.float32) -> PipelineParts:
    """The parts of a Stable Diffusion 1.x / 2.x or SDXL pipeline folder (a one-line error
    for any other pipeline class, naming it)."""
    need("diffusers", "diffusion", "training a diffusers pipeline")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    index = json.loads((Path(folder) / "model_index.json").read_text())
    kind = index.get("_class_name", "")
    if kind not in SUPPORTED:
        raise ValueError(f"{folder}: a {kind or 'pipeline without _class_name'}; dpokit trains "
                         f"{', '.join(SUPPORTED)} folders (a UNet, a VAE, CLIP text encoders) "
                         f"so far")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    tokenizers = [AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")]
    encoders = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)]
    if kind == "StableDiffusionXLPipeline":
        tokenizers.append(AutoTokenizer.from_pretrained(folder, subfolder="tokenizer_2"))
        encoders.append(CLIPTextModelWithProjection.from_pretrained(
            folder, subfolder="text_encoder_2", dtype=dtype))
    return PipelineParts(unet, vae.requires_grad_(False).eval(), tokenizers, encoders,
                         DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
                         image_geometry(unet, vae)[0], folder, kind)


def load_trained(folder: str, pipeline: str, kind: str, dtype: torch.dtype = torch.float32):
    """A :class:`~.policy.DiffusionPolicy` to evaluate or sample from: ``folder`` a trained
    run's ``final/`` (``kind`` ``adapter``: LoRA on ``pipeline``'s UNet, the reference the UNet
    with it off; ``full``: its ``unet/``, the reference ``pipeline``'s own UNet) or a pipeline
    folder itself (no reference)."""
    from diffusers import UNet2DConditionModel

    parts = load_pipeline(pipeline, dtype)
    if kind == "adapter":
        from peft import PeftModel

        return parts.policy(PeftModel.from_pretrained(parts.unet, folder).eval(), "adapter")
    if Path(folder).resolve() == Path(pipeline).resolve():
        return parts.policy(parts.unet.eval(), "none")
    trained = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    return parts.policy(trained.eval(), "copy", reference_model=parts.unet)
