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

from ...data.text.collate import Layout, TextBatch, collate_pairs, collate_sequences
from .models import concat_vision


def _attach(batch: TextBatch, visions: list, axis: str) -> TextBatch:
    """Put the image tensors of segment ``segment_order[k]``'s prompt k-th."""
    ordered = [visions[i].tensors for i in batch.segment_order if visions[i] is not None]
    batch.model_inputs = concat_vision(ordered, axis)
    return batch


@dataclass(frozen=True)
class VisionPairCollator:
    """Collates :class:`~.data.VisionPair` items; ``axis`` is the family's image axis."""

    pad_token_id: int
    axis: str
    layout: Layout = "prefix_shared"
    max_row_tokens: int | None = None

    def __call__(self, pairs: Sequence) -> TextBatch:
        batch = collate_pairs(pairs, self.pad_token_id, self.layout, self.max_row_tokens)
        shared = self.layout == "prefix_shared"
        visions = [p.vision for p in pairs] if shared else [p.vision for p in pairs] * 2
        return _attach(batch, visions, self.axis)

    @property
    def key(self) -> str:
        return f"vision-pairs:{self.axis}:{self.layout}:{self.pad_token_id}:{self.max_row_tokens}"


@dataclass(frozen=True)
class VisionSequenceCollator:
    """Collates :class:`~.data.VisionSequence` items (packed by default)."""

    pad_token_id: int
    axis: str
    layout: Layout = "packed"
    max_row_tokens: int | None = None

    def __call__(self, sequences: Sequence) -> TextBatch:
        batch = collate_sequences(sequences, self.pad_token_id, self.layout, self.max_row_tokens)
        return _attach(batch, [s.vision for s in sequences], self.axis)

    @property
    def key(self) -> str:
        return (f"vision-sequences:{self.axis}:{self.layout}:{self.pad_token_id}:"
                f"{self.max_row_tokens}")


def image_token_count(batch: TextBatch, image_token_id: int) -> int:
    """Image tokens the batch's rows hold (what the vision encoder's features must fill)."""
    return int((batch.input_ids == image_token_id).sum())



