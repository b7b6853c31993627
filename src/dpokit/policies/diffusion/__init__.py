"""Image generators as policies: a diffusers denoiser for Diffusion-DPO (its scores are
denoising errors at a per-pair noise and timestep), one-step generators for DrPO (an online
source ranking samples by a black-box reward, a drift objective in a frozen feature space)."""

from .conditioning import CLIPPromptEncoder, WordEncoder
from .data import (
    DiffusionBatch,
    DiffusionImageCollator,
    DiffusionPairCollator,
    DiffusionSource,
    ImageExample,
    ImagePair,
    build_image_examples,
    build_image_pairs,
    to_tensor,
)
from .drpo import DriftBatch, DrPOObjective, DrPOSource, zscore
from .generator import GeneratorPolicy, OneStepGenerator
from .objective import DenoisingObjective
from .policy import DiffusionPolicy, apply_lora

__all__ = ["CLIPPromptEncoder", "DenoisingObjective", "DiffusionBatch",
           "DiffusionImageCollator", "DiffusionPairCollator", "DiffusionPolicy",
           "DiffusionSource", "DrPOObjective", "DrPOSource", "DriftBatch", "GeneratorPolicy",
           "ImageExample", "ImagePair", "OneStepGenerator", "WordEncoder", "apply_lora",
           "build_image_examples", "build_image_pairs", "to_tensor", "zscore"]
