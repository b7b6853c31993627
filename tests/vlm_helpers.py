"""Tiny image-text models of two families, built in-process: LLaVA (CLIP vision tower, MLP
projector, Llama decoder) and Idefics3 / SmolVLM (SigLIP-style encoder, pixel-shuffle
connector, Llama decoder, images split into tiles), each with its processor."""

from __future__ import annotations

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


FAMILIES = {"llava": tiny_llava, "idefics3": tiny_idefics3}
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
