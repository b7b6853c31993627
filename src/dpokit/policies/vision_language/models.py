"""Loading image-text-to-text models and their processors, which parts train, and assembling
a small LLaVA-style model from a vision encoder and a causal LM.

Families are declared, not probed: :data:`IMAGE_AXIS` says, per ``model_type``, where its
processor puts the images of one prompt, so prompts can be batched in any order;
:data:`MROPE` names the families whose positions are 3-D (Qwen2-VL's multimodal rotary
positions: temporal, height, width), which :func:`mrope_positions` computes per prompt so
that every layout can place them.

    >>> IMAGE_AXIS["llava"], IMAGE_AXIS["idefics3"], IMAGE_AXIS["qwen2_vl"]
    ('first', 'second', 'first')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..causal_lm.families import LayoutRefused, dense_layout_reason
from ..causal_lm.models import resolve_model_path

# model_type -> the processor's image axis: "first": (I, C, H, W) pixel values (I images of
# one prompt); "second": (1, I, C, H, W) with a (1, I, H, W) pixel_attention_mask
# one prompt (Qwen2-VL: (patches, C·T·P·P) pixel values and an (I, 3) image_grid_thw)
IMAGE_AXIS = {"llava": "first", "idefics2": "second", "idefics3": "second", "smolvlm": "second",
              "qwen2_vl": "first", "qwen2_5_vl": "first", "gemma3": "first"}
# families whose positions are (3, ...) rotary positions (temporal, height, width)
MROPE = frozenset({"qwen2_vl", "qwen2_5_vl"})
# families whose image tokens attend to every token of their own image (Gemma 3), not only
# to the earlier ones
BIDIRECTIONAL_IMAGES = frozenset({"gemma3"})
VISION_KEYS = ("pixel_values", "pixel_attention_mask", "image_sizes", "image_grid_thw")
# the processor's per-token outputs dpokit lays out itself (Qwen2-VL's mm_token_type_ids only
# feed its own position computation, which mrope_positions replaces)
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")

# ChatML with list contents; each image part becomes the processor's image placeholder
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def image_axis(config) -> str:
    """The declared image axis of a model's family, or an error naming the families known."""
    kind = getattr(config, "model_type", None)
    if kind not in IMAGE_AXIS:
        raise ValueError(f"model_type {kind!r}: dpokit does not know how its processor batches "
                         f"images (known: {sorted(IMAGE_AXIS)})")
    return IMAGE_AXIS[kind]


def bidirectional_images(config) -> bool:
    """Whether the family's image tokens see their whole image (:data:`BIDIRECTIONAL_IMAGES`)."""
    return getattr(config, "model_type", None) in BIDIRECTIONAL_IMAGES


@dataclass(frozen=True)
class FamilyBatching:
    """What a family's batches need besides ids and pixels (the collators' options): mrope,
    3-D positions; block_images, the image token id when an image's tokens see their whole
    image (None: causal throughout)."""

    mrope: bool
    block_images: int | None


def family_batching(config, image_token_id: int, merge: int | None) -> FamilyBatching:
    """The collators' options of a family: ``merge`` its :func:`mrope_merge`."""
    return FamilyBatching(merge is not None,
                          image_token_id if bidirectional_images(config) else None)


def check_layout_window(config, layout: str, max_length: int) -> str:
    """The layout a vision-language run uses: packed and prefix-shared batches hand every
    layer one dense mask, so they are exact only where :func:`~dpokit.policies.causal_lm.
    families.dense_layout_reason` finds nothing (no sliding window shorter than max_length,
    no stateful layers); ``auto`` takes prefix_shared there, else padded; an explicit layout
    that cannot be exact is refused with the reason."""
    reason = dense_layout_reason(config, max_length)
    if layout == "auto":
        return "padded" if reason else "prefix_shared"
    if layout != "padded" and reason:
        raise LayoutRefused(f"batch_layout={layout}: {config.model_type}: {reason}; use "
                            f"batch_layout=padded (the model's own masks)")
    return layout


def uses_mrope(config) -> bool:
    """Whether the family's positions are 3-D rotary positions (:data:`MROPE`)."""
    return getattr(config, "model_type", None) in MROPE


def mrope_merge(config, processor) -> int | None:
    """The spatial merge size of a 3-D-position family (its image processor's), else None."""
    return int(processor.image_processor.merge_size) if uses_mrope(config) else None


def mrope_positions(ids: list[int], grid_thw: torch.Tensor | None, image_token_id: int,
                    merge: int) -> tuple[torch.Tensor, int]:
    """Qwen2-VL's positions of a prompt, (3, P), and the position its text continues at.
    Text tokens take the next position on all three axes; an image's t·(h/m)·(w/m) tokens take
    (start + t index, start + row, start + column), after which text continues at start +
    max(h, w)/m (the model's ``get_rope_index``; tests compare the two).

        >>> pos, nxt = mrope_positions([5, 9, 9, 9, 9, 6], torch.tensor([[1, 4, 4]]), 9, 2)
        >>> pos.tolist(), nxt
        ([[0, 1, 1, 1, 1, 3], [0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 2, 3]], 4)
    """
    columns: list[torch.Tensor] = []
    grids = iter(grid_thw.tolist() if grid_thw is not None else [])
    current, i = 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            columns.append(torch.full((3, 1), current, dtype=torch.long))
            current, i = current + 1, i + 1
            continue
        t, h, w = next(grids)
        gh, gw = h // merge, w // merge
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw),
                                          indexing="ij")).reshape(3, -1)  # (3, t·gh·gw)
        columns.append(grid + current)
        current, i = current + max(gh, gw), i + grid.shape[1]
    positions = torch.cat(columns, 1) if columns else torch.zeros((3, 0), dtype=torch.long)
    return positions, current


def vision_tensors(out, axis: str) -> dict[str, torch.Tensor]:
    """The image tensors of one prompt's processor output; an output dpokit does not know is an
    error (it could not be batched correctly)."""
    unknown = sorted(set(out) - set(VISION_KEYS) - set(TEXT_KEYS))
    if unknown:
        raise ValueError(f"the processor returns {unknown}: not supported (known image inputs: "
                         f"{list(VISION_KEYS)})")
    tensors = {k: out[k] for k in VISION_KEYS if k in out}
    if axis == "second":
        assert all(t.shape[0] == 1 for t in tensors.values()), "one prompt per call"
    return tensors


def _pad_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    pads = []
    for have, want in zip(reversed(t.shape), reversed(shape), strict=True):
        pads += [0, want - have]
    return torch.nn.functional.pad(t, pads)


def concat_vision(parts: list[dict[str, torch.Tensor]], axis: str) -> dict[str, torch.Tensor]:
    """Prompts' image tensors, in order, as one forward's inputs: concatenated on the image
    axis, smaller images zero-padded (their ``pixel_attention_mask`` marks the padding)."""
    if not parts:
        return {}
    dim = 0 if axis == "first" else 1
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        shape = tuple(max(v.shape[d] for v in values) for d in range(values[0].dim()))
        out[key] = torch.cat([_pad_to(v, (*v.shape[:dim + 1], *shape[dim + 1:]))
                              for v in values], dim=dim)
    return out


@dataclass(frozen=True)
class Parts:
    """Top-level module names of a vision-language model: ``language`` (the decoder and head),
    ``vision`` (the image encoder) and ``projector`` (what maps its features to the decoder)."""

    language: tuple[str, ...]
    vision: tuple[str, ...]
    projector: tuple[str, ...]


def model_parts(model: nn.Module) -> Parts:
    """Which submodules are which, from the model's own structure: the decoder is
    ``get_decoder()``, the vision encoder the child built from ``config.vision_config``."""
    decoder = model.get_decoder()
    vision_type = type(model.config.vision_config)
    names = {id(m): n for n, m in model.named_modules()}
    decoder_name = names[id(decoder)]
    body = model.get_submodule(decoder_name.rsplit(".", 1)[0]) if "." in decoder_name else model
    prefix = decoder_name.rsplit(".", 1)[0] + "." if "." in decoder_name else ""
    language, vision, projector = [decoder_name], [], []
    for name, child in body.named_children():
        full = prefix + name
        if child is decoder:
            continue
        if type(getattr(child, "config", None)) is vision_type:
            vision.append(full)
        else:
            projector.append(full)
    language += [n for n, _ in model.named_children() if prefix and n + "." != prefix]
    if not vision:
        raise ValueError(f"{type(model).__name__}: no child module built from its vision_config")
    return Parts(tuple(language), tuple(vision), tuple(projector))


def lora_targets(model: nn.Module, targets: list[str] | str | None, with_vision: bool) -> list[str]:
    """Full names of the Linear layers LoRA goes on: those of the language part (and of the
    vision encoder when ``with_vision``) whose last name is in ``targets`` (None or
    ``"all-linear"``: every one but the output head)."""
    parts = model_parts(model)
    scope = parts.language + (parts.vision if with_vision else ())
    head = {id(m) for m in [model.get_output_embeddings()] if m is not None}
    wanted = None if targets in (None, "all-linear", ["all-linear"]) else set(
        [targets] if isinstance(targets, str) else targets)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and id(m) not in head
             and any(n == s or n.startswith(s + ".") for s in scope)
             and (wanted is None or n.rsplit(".", 1)[-1] in wanted)]
    if not names:
        raise ValueError(f"no Linear layer named {sorted(wanted or [])} in {list(scope)}")
    return names


def load_vision_language_model(name: str, dtype: torch.dtype = torch.float32):
    """Any ``AutoModelForImageTextToText`` (hub name or folder), SDPA attention."""
    from transformers import AutoModelForImageTextToText

    resolve_model_path(name)  # a local folder checked: config, whole weights files
    return AutoModelForImageTextToText.from_pretrained(name, dtype=dtype,
                                                       attn_implementation="sdpa")


def load_processor(name: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(resolve_model_path(name))


def is_vision_language(name: str) -> bool:
    """Whether a model (hub name or folder) is an image-text-to-text model: its config has a
    ``vision_config``."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return False
    return getattr(config, "vision_config", None) is not None


def image_token_id(config) -> int:
    """The token id a family's config gives its image placeholder."""
    value = getattr(config, "image_token_id", None)
    value = getattr(config, "image_token_index", None) if value is None else value
    if value is None:
        raise ValueError(f"{getattr(config, 'model_type', config)}: its config names no image "
                         "token")
    return int(value)


def assemble_llava(vision_config, language_model: nn.Module, tokenizer, image_size: int,
                   patch_size: int, vision_tower: nn.Module | None = None):
    """A LLaVA model and processor from a CLIP-style vision encoder (``vision_tower``, or a new
    one from ``vision_config``), a causal LM (its weights kept) and a new two-layer projector;
    the tokenizer gets an ``<image>`` token (its embedding row: the mean of the others).

    Returns (model, processor); ``model.save_pretrained`` / ``processor.save_pretrained`` make
    an ordinary folder that ``AutoModelForImageTextToText`` loads.
    """
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text_config = language_model.config
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu",
                         tie_word_embeddings=text_config.tie_word_embeddings)
    config.text_config.vocab_size = len(tokenizer)
    model = LlavaForConditionalGeneration(config)
    language_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.model.language_model.load_state_dict(language_model.get_decoder().state_dict())
    model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
    if text_config.tie_word_embeddings:
        model.tie_weights()
    if vision_tower is not None:
        model.model.vision_tower.load_state_dict(vision_tower.state_dict())
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch_size,
                               num_additional_image_tokens=1,
                               vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE, image_token="<image>")
    return model, processor
