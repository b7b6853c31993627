"""Batches of image rows: the text layouts of :mod:`dpokit.data.text.collate`, plus the
prompts' image tensors in the order their image tokens appear in the rows.

``prefix_shared`` holds each prompt once (``[prompt | chosen | rejected]``), so each pair's
images are encoded once and shared by chosen and rejected; ``padded`` (the plain twin) and
``packed`` hold the prompt, images included, once per sequence.

    >>> VisionPairCollator(0, "second").key
    'vision-pairs:second:prefix_shared:0:None'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...data.text.collate import Layout, TextBatch, collate_pairs, collate_sequences
from .models import concat_vision


def _attach(batch: TextBatch, visions: list, axis: str) -> TextBatch:
    """Put the image tensors of segment ``segment_order[k]``'s prompt k-th."""
    ordered = [visions[i].tensors for i in batch.segment_order if visions[i] is not None]
    batch.model_inputs = concat_vision(ordered, axis)
    return batch


def image_blocks(batch: TextBatch, image_token_id: int) -> TextBatch:
    """Let each image's tokens attend to all of their image (Gemma 3): in ``padded``, through
    the model's own ``token_type_ids`` (1 on image tokens); in the segment layouts, by opening
    the block of each run of image tokens in the (R, 1, T, T) mask (a run never spans two
    segments: text surrounds every image)."""
    is_image = batch.input_ids == image_token_id  # (R, T)
    if batch.segments is None:
        batch.model_inputs["token_type_ids"] = is_image.long()
        return batch
    mask = batch.attention_mask.clone()  # (R, 1, T, T) bool
    for row in range(is_image.shape[0]):
        flags = is_image[row].tolist()
        start = None
        for t, flag in enumerate([*flags, False]):
            if flag and start is None:
                start = t
            elif not flag and start is not None:
                mask[row, 0, start:t, start:t] = True
                start = None
    batch.attention_mask = mask
    return batch


def mrope_position_ids(batch: TextBatch, examples: Sequence) -> torch.Tensor:
    """(3, R, T) positions of a batch of a 3-D-position family, in any layout: a token at 1-D
    position p of an example's row takes its prompt's 3-D position p when p is in the prompt,
    else ``next_position + p - len(prompt)`` on all three axes, so a completion continues its
    prompt's positions in every layout as in its own padded row. Padding takes 0.

    ``examples``: the batch's pairs (or sequences), whose ``vision`` carries the prompt
    positions (:class:`~.data.VisionInputs`); an example without images has 1-D positions.
    """
    rows, width = batch.input_ids.shape
    flat = (batch.position_ids if batch.position_ids is not None
            else torch.arange(width).expand(rows, width))  # (R, T) 1-D positions
    out = torch.zeros((3, rows, width), dtype=torch.long)  # (3, R, T)
    n = len(examples)
    if batch.segments is None:  # padded: row r holds example r % n from column 0
        spans = [(r, 0, int(batch.attention_mask[r].sum()), r % n) for r in range(rows)]
    else:
        order = iter(batch.segment_order)
        spans = [(r, start, p + a + b, next(order) % n)
                 for r, row in enumerate(batch.segments) for start, p, a, b in row]
    for row, start, length, owner in spans:
        example = examples[owner]
        prompt = len(example.prompt_ids)
        vision = example.vision
        positions = (vision.positions if vision is not None and vision.positions is not None
                     else torch.arange(prompt).expand(3, prompt))  # (3, P)
        after = vision.next_position if vision is not None and vision.positions is not None \
            else prompt
        p = flat[row, start:start + length]  # (L,)
        tail = torch.arange(int(p.max()) + 1 - prompt if len(p) else 0).clamp(min=0) + after
        table = torch.cat([positions, tail.expand(3, -1)], 1)  # (3, P + completion)
        out[:, row, start:start + length] = table[:, p]
    return out


@dataclass(frozen=True)
class VisionPairCollator:
    """Collates :class:`~.data.VisionPair` items; ``axis`` is the family's image axis,
    ``mrope`` whether its positions are 3-D (:func:`mrope_position_ids`), ``block_images`` its
    image token id when an image's tokens see their whole image (:func:`image_blocks`)."""

    pad_token_id: int
    axis: str
    layout: Layout = "prefix_shared"
    max_row_tokens: int | None = None
    mrope: bool = False
    block_images: int | None = None

    def __call__(self, pairs: Sequence) -> TextBatch:
        batch = collate_pairs(pairs, self.pad_token_id, self.layout, self.max_row_tokens)
        shared = self.layout == "prefix_shared"
        visions = [p.vision for p in pairs] if shared else [p.vision for p in pairs] * 2
        if self.mrope:
            batch.position_ids = mrope_position_ids(batch, pairs)
        batch = _attach(batch, visions, self.axis)
        return image_blocks(batch, self.block_images) if self.block_images is not None else batch

    @property
    def key(self) -> str:
        return (f"vision-pairs:{self.axis}:{self.layout}:{self.pad_token_id}:"
                f"{self.max_row_tokens}{':mrope' if self.mrope else ''}"
                f"{f':blocks{self.block_images}' if self.block_images is not None else ''}")


@dataclass(frozen=True)
class VisionSequenceCollator:
    """Collates :class:`~.data.VisionSequence` items (packed by default); the family's
    options as for pairs."""

    pad_token_id: int
    axis: str
    layout: Layout = "packed"
    max_row_tokens: int | None = None
    mrope: bool = False
    block_images: int | None = None

    def __call__(self, sequences: Sequence) -> TextBatch:
        batch = collate_sequences(sequences, self.pad_token_id, self.layout, self.max_row_tokens)
        if self.mrope:
            batch.position_ids = mrope_position_ids(batch, sequences)
        batch = _attach(batch, [s.vision for s in sequences], self.axis)
        return image_blocks(batch, self.block_images) if self.block_images is not None else batch

    @property
    def key(self) -> str:
        return (f"vision-sequences:{self.axis}:{self.layout}:{self.pad_token_id}:"
                f"{self.max_row_tokens}{':mrope' if self.mrope else ''}"
                f"{f':blocks{self.block_images}' if self.block_images is not None else ''}")


def image_token_count(batch: TextBatch, image_token_id: int) -> int:
    """Image tokens the batch's rows hold (what the vision encoder's features must fill)."""
    return int((batch.input_ids == image_token_id).sum())



