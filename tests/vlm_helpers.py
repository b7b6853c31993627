"""Tiny image-text models of four families, built in-process: LLaVA (CLIP vision tower, MLP
projector, Llama decoder), Idefics3 / SmolVLM (SigLIP-style encoder, pixel-shuffle connector,
Llama decoder, images split into tiles), Qwen2-VL / Qwen2.5-VL (ViT with merger, 3-D rotary
positions) and Gemma 3 (SigLIP, pooled projector, bidirectional attention inside an image),
each with its processor."""

from __future__ import annotations

import tempfile

import torch
from conftest import make_tokenizer
from PIL import Image, ImageDraw

from dpokit.policies.vision_language.models import CHAT_TEMPLATE

TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "tie_word_embeddings": False}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
LLAVA_IMAGE_TOKENS = 16  # (32 / 8)^2 patches, CLS dropped
IDEFICS3_TILE_TOKENS = 4  # (32 / 8)^2 patches / scale_factor^2


def tiny_llava(seed: int = 0):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaConfig(vision_config=CLIPVisionConfig(**VISION),
                         text_config=LlamaConfig(vocab_size=len(tok), **TEXT),
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8,
                               num_additional_image_tokens=1,
                               vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE, image_token="<image>")
    return model, processor


def tiny_idefics3(seed: int = 0):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
    )

    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [
        "<image>", "<fake_token_around_image>", "<global-img>",
        *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]]})
    config = Idefics3Config(vision_config=VISION,
                            text_config=LlamaConfig(vocab_size=len(tok), **TEXT).to_dict(),
                            image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2,
                            tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    images = Idefics3ImageProcessor(size={"longest_edge": 64},
                                    max_image_size={"longest_edge": 32}, do_image_splitting=True)
    processor = Idefics3Processor(image_processor=images, tokenizer=tok,
                                  image_seq_len=IDEFICS3_TILE_TOKENS, chat_template=CHAT_TEMPLATE)
    return model, processor


def _qwen2_vl_processor_class():
    """Qwen2-VL's processor without its video half (whose processor needs torchvision, which
    has no CPU build on PyPI), registered so that AutoProcessor loads a saved one."""
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLProcessor

    class TinyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template,
                             **kwargs)

    AutoProcessor.register(Qwen2VLConfig, TinyQwen2VLProcessor, exist_ok=True)
    return TinyQwen2VLProcessor


def tiny_qwen2_vl(seed: int = 0, version: str = "2"):
    """Qwen2-VL (``version="2.5"``: Qwen2.5-VL, windowed ViT attention): a ViT on 8x8
    patches (2 frames), 2x2 patches merged per image token, 3-D rotary positions (temporal,
    height, width) in a Qwen2 decoder."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tok = make_tokenizer()
    specials = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text = {**TEXT, "vocab_size": len(tok), "rope_parameters": {
        "rope_type": "default", "rope_theta": 100.0, "mrope_section": [2, 1, 1]}}
    vision = {"hidden_size": 32, "num_heads": 4, "patch_size": 8, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    if version == "2":
        config_class = transformers.Qwen2VLConfig
        model_class = transformers.Qwen2VLForConditionalGeneration
        vision.update(depth=1, embed_dim=32)
    else:
        config_class = transformers.Qwen2_5_VLConfig
        model_class = transformers.Qwen2_5_VLForConditionalGeneration
        vision.update(depth=2, intermediate_size=64, out_hidden_size=32, window_size=32,
                      fullatt_block_indexes=[1])
    config = config_class(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = model_class(config)
    images = Qwen2VLImageProcessorPil(min_pixels=32 * 32, max_pixels=48 * 48, patch_size=8,
                                      merge_size=2, temporal_patch_size=2)
    template = CHAT_TEMPLATE.replace("{{ '<image>' }}",
                                     "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}")
    processor = _qwen2_vl_processor_class()(image_processor=images, tokenizer=tok,
                                            chat_template=template)
    return model, processor


GEMMA3_IMAGE_TOKENS = 4  # (32 / 8)^2 patches, average-pooled 2x2


def tiny_gemma3(seed: int = 0, sliding_window: int = 512):
    """Gemma 3: a SigLIP encoder, pooled to 4 tokens per image, into a Gemma 3 decoder (local
    sliding-window and global layers); an image's tokens attend to all of their image."""
    from transformers import (
        AutoTokenizer,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    folder = tempfile.mkdtemp()
    make_tokenizer().save_pretrained(folder)
    # Gemma's tokenizer names its image tokens (saved with it, as a real one's are)
    tok = AutoTokenizer.from_pretrained(folder, extra_special_tokens={
        "boi_token": "<start_of_image>", "image_token": "<image_soft_token>",
        "eoi_token": "<end_of_image>"})
    ids = [tok.boi_token_id, tok.image_token_id, tok.eoi_token_id]
    text = {**TEXT, "vocab_size": len(tok), "head_dim": 8, "query_pre_attn_scalar": 8,
            "sliding_window": sliding_window}
    text.pop("tie_word_embeddings")
    config = Gemma3Config(text_config=text, vision_config={**VISION,
                                                           "model_type": "siglip_vision_model"},
                          mm_tokens_per_image=GEMMA3_IMAGE_TOKENS, boi_token_index=ids[0],
                          image_token_index=ids[1], eoi_token_index=ids[2],
                          tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # (its projection starts at 0, which would hide every image)
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    images = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)
    template = CHAT_TEMPLATE.replace("{{ '<image>' }}", "{{ '<start_of_image>' }}")
    processor = Gemma3Processor(image_processor=images, tokenizer=tok, chat_template=template,
                                image_seq_length=GEMMA3_IMAGE_TOKENS)
    return model, processor


FAMILIES = {"llava": tiny_llava, "idefics3": tiny_idefics3, "qwen2_vl": tiny_qwen2_vl,
            "gemma3": tiny_gemma3}
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}


def shape_image(colour: str, shape: str = "square", size: tuple[int, int] = (40, 40)):
    """A coloured square or circle on white."""
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return image


def colour_rows(n: int, tmp_path=None) -> list[dict]:
    """Pairs 'what colour is the shape?' -> the right colour (chosen) vs another (rejected);
    images as PIL objects, or saved PNG paths relative to ``tmp_path`` when given."""
    names, rows = list(COLOURS), []
    for i in range(n):
        colour, wrong = names[i % 3], names[(i + 1) % 3]
        image = shape_image(colour, "square" if i % 2 else "circle", (40 + 8 * (i % 3), 40))
        if tmp_path is not None:
            image.save(tmp_path / f"img{i}.png")
            image = f"img{i}.png"
        rows.append({"prompt": "What colour is the shape?", "images": [image],
                     "chosen": f"It is {colour}.", "rejected": f"It is {wrong}."})
    return rows
