"""Vision-language models (``AutoModelForImageTextToText``) as policies: rows with images,
their batches (images encoded once per pair in the prefix-shared layout) and the policy."""

from .collate import VisionPairCollator, VisionSequenceCollator, image_token_count
from .data import (
    VisionPair,
    VisionSequence,
    VisionTokenizer,
    build_vision_pairs,
    build_vision_sequences,
)
from .models import IMAGE_AXIS, assemble_llava, image_axis, lora_targets, model_parts
from .policy import VisionLanguagePolicy

__all__ = ["IMAGE_AXIS", "VisionLanguagePolicy", "VisionPair", "VisionPairCollator",
           "VisionSequence", "VisionSequenceCollator", "VisionTokenizer", "assemble_llava",
           "build_vision_pairs", "build_vision_sequences", "image_axis", "image_token_count",
           "lora_targets", "model_parts"]
