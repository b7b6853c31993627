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
from .conditioning import (
    CLIPPromptEncoder,
    SD3PromptEncoder,
    SDXLPromptEncoder,
    sd3_transformer_call,
    sdxl_unet_call,
)
from .policy import Denoise, DiffusionPolicy, image_geometry, unet_call

SUPPORTED = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline")
SD3 = "StableDiffusion3Pipeline"


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
        if self.kind == SD3:
            return (SD3PromptEncoder(self.tokenizers, self.text_encoders,
                                     self.unet.config.joint_attention_dim),
                    sd3_transformer_call)
        return CLIPPromptEncoder(self.tokenizer, self.text_encoders[0]), unet_call

    def policy(self, unet: nn.Module, reference: str,
               reference_model: nn.Module | None = None) -> DiffusionPolicy:
        """A :class:`~.policy.DiffusionPolicy` of ``unet`` (this pipeline's, trained or with
        an adapter) with this pipeline's conditioning, VAE and schedule."""
        encoder, denoise = self.conditioning()
        return DiffusionPolicy(unet, self.scheduler, encoder, reference=reference,
                               vae=self.vae, denoise=denoise, source=self.source,
                               reference_model=reference_model, pipeline_kind=self.kind)


def load_denoiser(folder: str | Path, kind: str, dtype: torch.dtype = torch.float32):
    """The denoiser of a pipeline (or of a full fine-tune's ``final/``): ``unet/`` or SD3's
    ``transformer/``."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    if kind == SD3:
        return SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer",
                                                     torch_dtype=dtype)
    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)


def load_pipeline(folder: str, dtype: torch.dtype = torch.float32) -> PipelineParts:
    """The parts of a Stable Diffusion 1.x / 2.x, SDXL or SD3 pipeline folder (a one-line
    error for any other pipeline class, naming it)."""
    need("diffusers", "diffusion", "training a diffusers pipeline")
    from diffusers import AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler
    from transformers import (
        AutoTokenizer,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5EncoderModel,
    )

    index = json.loads((Path(folder) / "model_index.json").read_text())
    kind = index.get("_class_name", "")
    if kind not in SUPPORTED:
        raise ValueError(f"{folder}: a {kind or 'pipeline without _class_name'}; dpokit trains "
                         f"{', '.join(SUPPORTED)} folders so far")
    denoiser = load_denoiser(folder, kind, dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    first = CLIPTextModelWithProjection if kind == SD3 else CLIPTextModel
    tokenizers = [AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")]
    encoders = [first.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)]
    if kind != "StableDiffusionPipeline":
        tokenizers.append(AutoTokenizer.from_pretrained(folder, subfolder="tokenizer_2"))
        encoders.append(CLIPTextModelWithProjection.from_pretrained(
            folder, subfolder="text_encoder_2", dtype=dtype))
    if kind == SD3 and (index.get("text_encoder_3") or [None])[0] is not None:
        tokenizers.append(AutoTokenizer.from_pretrained(folder, subfolder="tokenizer_3"))
        encoders.append(T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_3",
                                                       dtype=dtype))
    schedule = FlowMatchEulerDiscreteScheduler if kind == SD3 else DDPMScheduler
    return PipelineParts(denoiser, vae.requires_grad_(False).eval(), tokenizers, encoders,
                         schedule.from_pretrained(folder, subfolder="scheduler"),
                         image_geometry(denoiser, vae)[0], folder, kind)


def load_trained(folder: str, pipeline: str, kind: str, dtype: torch.dtype = torch.float32):
    """A :class:`~.policy.DiffusionPolicy` to evaluate or sample from: ``folder`` a trained
    run's ``final/`` (``kind`` ``adapter``: LoRA on ``pipeline``'s denoiser, the reference the
    denoiser with it off; ``full``: its ``unet/`` or ``transformer/``, the reference
    ``pipeline``'s own) or a pipeline folder itself (no reference)."""
    parts = load_pipeline(pipeline, dtype)
    if kind == "adapter":
        from peft import PeftModel

        return parts.policy(PeftModel.from_pretrained(parts.unet, folder).eval(), "adapter")
    if Path(folder).resolve() == Path(pipeline).resolve():
        return parts.policy(parts.unet.eval(), "none")
    trained = load_denoiser(folder, parts.kind, dtype)
    return parts.policy(trained.eval(), "copy", reference_model=parts.unet)
