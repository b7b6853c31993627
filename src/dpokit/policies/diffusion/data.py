"""Image preference pairs for Diffusion-DPO: rows of (prompt, chosen image, rejected image),
images as paths, bytes, ``datasets`` records or PIL images (:mod:`dpokit.data.images`),
resized to the model's resolution and scaled to [-1, 1].

A batch carries the noise and the timestep of each pair, shared by its chosen and its
rejected image (Wallace et al. 2023), drawn when the batch is made: the policy's pass and the
reference's pass read the same draw, and :class:`DiffusionSource` seeds it with the step, so a
resumed run draws what the uninterrupted one did.

    >>> batch = DiffusionPairCollator(num_timesteps=10)(
    ...     [ImagePair(0, "a red circle", torch.zeros(3, 8, 8), torch.ones(3, 8, 8))])
    >>> batch.images.shape, batch.noise.shape, batch.timesteps.shape
    (torch.Size([2, 3, 8, 8]), torch.Size([1, 3, 8, 8]), torch.Size([1]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ...data.images import open_image
from ...data.io import DataError, Record, check_columns
from ...data.report import ExampleSet, OnBadRows, build_examples
from ...train.sources import StaticSource

COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class ImagePair:
    """prompt; chosen, rejected: (C, H, W) float in [-1, 1]."""

    index: int
    prompt: str
    chosen: torch.Tensor
    rejected: torch.Tensor

    def token_lists(self) -> list[list[int]]:  # the dataset fingerprint: prompt and pixels
        pixels = torch.cat([self.chosen.flatten(), self.rejected.flatten()])
        return [list(self.prompt.encode()), (pixels * 127.5).round().int().tolist()[::7]]


def to_tensor(image, size: int) -> torch.Tensor:
    """A PIL image -> (3, size, size) float in [-1, 1]."""
    import numpy as np

    from ...core.packages import need

    need("PIL", "vision", "image rows")
    from PIL import Image

    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3)
    return array.permute(2, 0, 1) / 127.5 - 1.0  # (3, H, W)


PICK_A_PIC = ("caption", "jpg_0", "jpg_1", "label_0")
TIE = "tie (label_0 = 0.5)"


def pair_fields(record: Record) -> tuple[str, str, str, str] | None:
    """The (prompt, chosen, rejected) column names of an image row, as ``(prompt, chosen,
    rejected, format)``: ``prompt, chosen, rejected`` rows, or Pick-a-Pic's ``caption, jpg_0,
    jpg_1, label_0`` (label_0 = 1: jpg_0 preferred; 0: jpg_1; 0.5: a tie, None).

        >>> pair_fields(Record("p.jsonl", 1, {"caption": "a cat", "jpg_0": "a.png",
        ...                                   "jpg_1": "b.png", "label_0": 0}))
        ('caption', 'jpg_1', 'jpg_0', 'pick-a-pic')
    """
    values = record.values
    if "caption" not in values and "label_0" not in values:
        return "prompt", "chosen", "rejected", "pairs"
    check_columns(record, PICK_A_PIC)
    label = values.get("label_0")
    if label in (0.5, "0.5"):
        return None
    if label not in (0, 1, 0.0, 1.0, "0", "1", True, False):
        raise DataError(record.source, record.row, "label_0", f"{label!r}: not 1 (jpg_0 "
                        f"preferred), 0 (jpg_1) or 0.5 (a tie)")
    first = label in (1, 1.0, "1", True)
    return ("caption", "jpg_0", "jpg_1", "pick-a-pic") if first else (
        "caption", "jpg_1", "jpg_0", "pick-a-pic")


def build_image_pairs(records: list[Record], size: int, on_bad_rows: OnBadRows = "error",
                      skipped: list[DataError] | None = None) -> ExampleSet:
    """Read every image pair row (``prompt, chosen, rejected``, or Pick-a-Pic's ``caption,
    jpg_0, jpg_1, label_0``: ties dropped and counted); bad rows raise or are counted."""
    ties = [r for r in records if pair_fields(r) is None]
    tied = {id(r) for r in ties}
    records = [r for r in records if id(r) not in tied]

    def make(record: Record, report, index: int) -> ImagePair:
        prompt_name, chosen_name, rejected_name, kind = pair_fields(record)
        if kind == "pairs":
            check_columns(record, COLUMNS)
        for name in (prompt_name, chosen_name, rejected_name):
            if record.values.get(name) in (None, ""):
                raise DataError(record.source, record.row, name, f"missing column: {name!r}")
        prompt = record.values[prompt_name]
        if not isinstance(prompt, str):
            raise DataError(record.source, record.row, prompt_name, "not a string")
        chosen, rejected = (to_tensor(open_image(record.values[n], record, n), size)
                            for n in (chosen_name, rejected_name))
        if torch.equal(chosen, rejected):
            raise DataError(record.source, record.row, chosen_name,
                            "chosen identical to rejected")
        return ImagePair(index, prompt, chosen, rejected)

    if not records and ties:
        raise DataError(ties[0].source, None, None, f"no usable rows: all {len(ties)} are ties")
    built = build_examples(records, make, on_bad_rows, skipped=skipped)
    if ties:
        built.report.skipped[TIE] += len(ties)
    return built


@dataclass
class ImageExample:
    """An SFT row of an image model: prompt; image: (C, H, W) float in [-1, 1]."""

    index: int
    prompt: str
    image: torch.Tensor

    def token_lists(self) -> list[list[int]]:  # the dataset fingerprint: prompt and pixels
        return [list(self.prompt.encode()),
                (self.image.flatten() * 127.5).round().int().tolist()[::7]]


IMAGE_COLUMNS = ("prompt", "image")


def build_image_examples(records: list[Record], size: int, on_bad_rows: OnBadRows = "error",
                         skipped: list[DataError] | None = None) -> ExampleSet:
    """Read every image SFT row: ``prompt, image`` (or ``caption, image``), the image a path,
    bytes or a PIL image; bad rows raise or are counted."""

    def make(record: Record, report, index: int) -> ImageExample:
        prompt_name = "caption" if "caption" in record.values else "prompt"
        check_columns(record, (prompt_name, "image"))
        for name in (prompt_name, "image"):
            if record.values.get(name) in (None, ""):
                raise DataError(record.source, record.row, name, f"missing column: {name!r}")
        prompt = record.values[prompt_name]
        if not isinstance(prompt, str):
            raise DataError(record.source, record.row, prompt_name, "not a string")
        image = to_tensor(open_image(record.values["image"], record, "image"), size)
        return ImageExample(index, prompt, image)

    return build_examples(records, make, on_bad_rows, skipped=skipped)


@dataclass
class DiffusionBatch:
    """E image pairs as S = 2E samples (the E chosen, then the E rejected), or E single
    images (an SFT batch: S = E).

    prompts: the E prompts. images: (S, C, H, W) in [-1, 1]. noise: (E, C, H, W) and
    timesteps: (E,) long, one draw per pair, shared by its two samples. extras: per-pair
    columns for the loss (none here). latents: (S, ...) the images encoded by a latent
    model's VAE, filled by the first pass that needs them (the policy's and the reference's
    passes share one encoding).
    """

    example_index: torch.Tensor
    prompts: list[str]
    images: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    num_tokens: int = 0
    ref_logps: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    latents: torch.Tensor | None = None

    def to(self, device) -> DiffusionBatch:
        return DiffusionBatch(**{f.name: (v.to(device) if isinstance(v, torch.Tensor) else v)
                                 for f in fields(self) for v in [getattr(self, f.name)]})


@dataclass(frozen=True)
class DiffusionPairCollator:
    """Stacks pairs and draws each pair's noise and timestep (from ``generator``, or seeded by
    the pairs' indices: evaluation batches always get the same draw). ``noise_shape``: the
    shape (C, H, W) of what is noised, for a latent model (its VAE's latents); default: the
    images'."""

    num_timesteps: int = 1000
    seed: int = 0
    key: str = "diffusion-pairs"
    noise_shape: tuple[int, ...] | None = None

    def __call__(self, pairs: list[ImagePair],
                 generator: torch.Generator | None = None) -> DiffusionBatch:
        chosen = torch.stack([p.chosen for p in pairs])  # (E, C, H, W)
        rejected = torch.stack([p.rejected for p in pairs])
        return self._batch(pairs, torch.cat([chosen, rejected]), generator)

    def _batch(self, items: Sequence, images: torch.Tensor,
               generator: torch.Generator | None) -> DiffusionBatch:
        """The batch of ``items`` (pairs or images) with ``images`` (S, C, H, W) and one noise
        and timestep draw per item (from ``generator``, or seeded by the items' indices)."""
        if generator is None:
            indices = tuple(x.index for x in items)  # a tuple of ints hashes the same every run
            generator = torch.Generator().manual_seed(hash((self.seed, *indices)) % 2**31)
        shape = (len(items), *(self.noise_shape or images.shape[1:]))
        noise = torch.randn(shape, generator=generator)  # (E, C, H, W) of what is noised
        timesteps = torch.randint(0, self.num_timesteps, (len(items),), generator=generator)
        return DiffusionBatch(torch.tensor([x.index for x in items]),
                              [x.prompt for x in items], images, noise, timesteps)


@dataclass(frozen=True)
class DiffusionImageCollator(DiffusionPairCollator):
    """Stacks single images (SFT rows) and draws each one's noise and timestep, as
    :class:`DiffusionPairCollator` does for a pair."""

    key: str = "diffusion-images"

    def __call__(self, examples: list[ImageExample],  # type: ignore[override]
                 generator: torch.Generator | None = None) -> DiffusionBatch:
        return self._batch(examples, torch.stack([e.image for e in examples]), generator)


@dataclass
class DiffusionSource(StaticSource):
    """A :class:`~dpokit.train.StaticSource` whose micro-batches draw their noise and
    timesteps from a generator seeded by ``(seed, step, rank, micro-batch)``: a pure function
    of the step, as the order is. Not precomputable: the reference runs on each draw."""

    precomputable: bool = False

    def micro_batches(self, step: int, policy: Any = None) -> list[DiffusionBatch]:
        out = []
        for k, indices in enumerate(self.step_indices(step)[0]):
            generator = torch.Generator().manual_seed(
                ((self.seed * 1_000_003 + step) * 1009 + self.rank) * 101 + k)
            out.append(self.collate([self.dataset[i] for i in indices], generator))
        return out
