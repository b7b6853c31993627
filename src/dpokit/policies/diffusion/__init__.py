"""Image generators as policies: a diffusers denoiser for Diffusion-DPO (its scores are
denoising errors at a per-pair noise and timestep), one-step generators for DrPO (an online
source ranking samples by a black-box reward, a drift objective in a frozen feature space)."""

from .conditioning import CLIPPromptEncoder, WordEncoder
from .data import (
    DiffusionBatch,
    DiffusionPairCollator,
    DiffusionSource,
    ImagePair,
    build_image_pairs,
    to_tensor,
)
from .drpo import DriftBatch, DrPOObjective, DrPOSource, zscore
from .generator import GeneratorPolicy, OneStepGenerator
from .policy import DiffusionPolicy, apply_lora

__all__ = ["CLIPPromptEncoder", "DiffusionBatch", "DiffusionPairCollator", "DiffusionPolicy",
           "DiffusionSource", "DrPOObjective", "DrPOSource", "DriftBatch",
           "GeneratorPolicy", "ImagePair", "OneStepGenerator", "WordEncoder", "apply_lora",
           "build_image_pairs", "to_tensor", "zscore"]
