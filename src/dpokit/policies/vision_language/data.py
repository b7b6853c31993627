"""Preference pairs and SFT rows with images, tokenized by the model's processor.

A row is a text row (``prompt``, ``chosen``, ``rejected``; or ``prompt`` + ``completion`` /
``messages`` for SFT) plus an ``images`` column (:mod:`.images`). The prompt is a string (its
images go first in the user turn) or a conversation whose contents may hold
``{"type": "image"}`` placeholders, one per image, in order (TRL's format). The processor
renders the chat and expands each placeholder into the model's image tokens; the completions
are tokenized after the rendered prompt, exactly as text rows are.

Image tokens are never cut: a prompt longer than ``max_prompt_length`` (or leaving no room in
``max_length``) is reported as a bad row, with its image-token count, and skipped only with
``on_bad_rows: skip``; completions are cut to fit, as for text, and counted.

    >>> to_messages("What colour?", 1)[0]["content"]
    [{'type': 'image'}, {'type': 'text', 'text': 'What colour?'}]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ...data.images import COLUMN, row_images
from ...data.io import DataError, Record
from ...data.report import DataReport, ExampleSet, OnBadRows, build_examples
from ...data.text.format import TEMPLATE_COLUMNS, check_columns
from ...data.text.pairs import TokenizeSettings

PAIR_COLUMNS = ("prompt", "chosen", "rejected", COLUMN, *TEMPLATE_COLUMNS)
SFT_COLUMNS = ("prompt", "completion", "messages", COLUMN, *TEMPLATE_COLUMNS)


@dataclass
class VisionInputs:
    """One prompt's images as the processor made them.

    tensors: name -> tensor of the processor's image outputs (``pixel_values`` and, by family,
        ``pixel_attention_mask`` / ``image_sizes``), with the images on the family's image
        axis (:data:`~.models.IMAGE_AXIS`).
    num_images: images in the prompt; num_image_tokens: the tokens they became.
    digest: a hash of the pixels (part of the dataset fingerprint).
    positions: for a family with 3-D positions (:data:`~.models.MROPE`), the prompt's (3, P)
        positions, and ``next_position``, where its completions' text continues; else None.
    """

    tensors: dict[str, torch.Tensor]
    num_images: int
    num_image_tokens: int
    digest: int
    positions: torch.Tensor | None = None
    next_position: int = 0


@dataclass
class VisionPair:
    """A tokenized pair whose prompt holds images; lays out like a text pair."""

    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    vision: VisionInputs | None
    extras: dict[str, float] = field(default_factory=dict)
    source: str = ""
    row: int = 0

    def token_lists(self) -> list[list[int]]:
        pixels = [self.vision.digest] if self.vision else []
        return [self.prompt_ids, self.chosen_ids, self.rejected_ids, pixels]


@dataclass
class VisionSequence:
    """A tokenized SFT example whose prompt holds images."""

    index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    vision: VisionInputs | None
    source: str = ""
    row: int = 0

    def token_lists(self) -> list[list[int]]:
        return [self.prompt_ids, self.completion_ids, [self.vision.digest] if self.vision else []]


def _content(value: Any, record: Record, name: str) -> list[dict]:
    """A message content as a list of parts (a string is one text part)."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") in ("text", "image")
                                       for p in value):
        for i, part in enumerate(value):
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise DataError(record.source, record.row, f"{name}[{i}].text", "not a string")
        return [dict(p) for p in value]
    raise DataError(record.source, record.row, name, "a content is a string or a list of "
                    "{'type': 'text', 'text': ...} / {'type': 'image'} parts")


def to_messages(value: Any, num_images: int, role: str = "user", record: Record | None = None,
                name: str = "prompt") -> list[dict]:
    """A prompt or completion as messages with list contents; a string prompt gets its
    ``num_images`` image placeholders first, as TRL places them."""
    record = record or Record("", 0, {})
    if isinstance(value, str):
        if not value.strip():
            raise DataError(record.source, record.row, name, "empty field")
        parts = [{"type": "image"}] * num_images if role == "user" else []
        return [{"role": role, "content": [*parts, {"type": "text", "text": value}]}]
    if not (isinstance(value, list) and value and all(isinstance(m, dict) for m in value)):
        raise DataError(record.source, record.row, name,
                        "not a string or a non-empty list of messages")
    return [{"role": m.get("role"), "content": _content(m.get("content"), record,
                                                        f"{name}[{i}].content")}
            for i, m in enumerate(value)]


def _placeholders(messages: list[dict]) -> int:
    return sum(p["type"] == "image" for m in messages for p in m["content"])


def _field(record: Record, name: str) -> Any:
    if name not in record.values or record.values[name] is None:
        raise DataError(record.source, record.row, name, f"missing column: {name!r} "
                        f"(columns present: {sorted(record.values)})")
    return record.values[name]


class VisionTokenizer:
    """Renders and tokenizes image rows with a processor (``AutoProcessor``).

    image_axis: where the family's processor puts images (``"first"``: (I, ...) tensors;
    ``"second"``: (1, I, ...)); see :data:`~.models.IMAGE_AXIS`. mrope_merge: for a family
    with 3-D positions, its spatial merge size (each prompt's positions are computed here).
    """

    def __init__(self, processor, image_token_id: int, image_axis: str,
                 settings: TokenizeSettings, mrope_merge: int | None = None):
        if getattr(processor, "chat_template", None) is None:
            raise ValueError("the processor has no chat template: image rows are rendered as a "
                             "chat (set processor.chat_template)")
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.image_token_id, self.image_axis, self.settings = image_token_id, image_axis, settings
        self.mrope_merge = mrope_merge

    def _template(self, messages: list[dict], record: Record, generation: bool) -> str:
        from ...data.text.format import template_inputs

        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation,
                                                  **template_inputs(record))

    def prompt(self, record: Record, prompt: Any,
               images: list) -> tuple[list[int], VisionInputs | None]:
        """The prompt's token ids (image tokens expanded) and its image tensors."""
        messages = to_messages(prompt, len(images), record=record)
        slots = _placeholders(messages)
        if slots != len(images):
            raise DataError(record.source, record.row, COLUMN, f"{len(images)} image(s) but "
                            f"{slots} image placeholder(s) in the prompt")
        text = self._template(messages, record, generation=True)
        out = self.processor(text=[text], images=[images] if images else None,
                             return_tensors="pt", add_special_tokens=False)
        ids = out["input_ids"][0].tolist()
        if not images:
            return ids, None
        from .models import mrope_positions, vision_tensors

        tensors = vision_tensors(out, self.image_axis)
        digest = hashlib.sha256()
        for value in tensors.values():
            digest.update(value.float().numpy().tobytes())
        count = sum(t == self.image_token_id for t in ids)
        vision = VisionInputs(tensors, len(images), count, int(digest.hexdigest()[:15], 16))
        if self.mrope_merge is not None:
            vision.positions, vision.next_position = mrope_positions(
                ids, tensors.get("image_grid_thw"), self.image_token_id, self.mrope_merge)
        return ids, vision

    def completion(self, record: Record, prompt: Any, completion: Any, name: str,
                   images: int) -> list[int]:
        """The completion's ids: what the template adds after the prompt, ending with EOS."""
        before = to_messages(prompt, images, record=record)
        after = to_messages(completion, 0, role="assistant", record=record, name=name)
        start = self._template(before, record, generation=True)
        full = self._template(before + after, record, generation=False)
        if not full.startswith(start):
            raise DataError(record.source, record.row, name, "the chat template does not render "
                            "the prompt as a prefix of prompt + completion")
        text, eos = full[len(start):], self.tokenizer.eos_token
        has_eos = bool(eos) and text.rstrip().endswith(eos)
        ids = list(self.tokenizer(text.rstrip() if has_eos else text,
                                  add_special_tokens=False)["input_ids"])
        if not has_eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        if not ids:
            raise DataError(record.source, record.row, name, "empty field: no tokens")
        return ids

    def fit(self, record: Record, prompt_ids: list[int], vision: VisionInputs | None,
            completions: list[list[int]]) -> tuple[list[list[int]], int]:
        """Check the prompt against the limits (never cut: it may hold image tokens); cut the
        completions to fit ``max_length``; return them and how many were cut."""
        s, images = self.settings, vision.num_image_tokens if vision else 0
        held = f" ({images} of them image tokens, which are never cut)" if images else ""
        if len(prompt_ids) > s.max_prompt_length:
            raise DataError(record.source, record.row, "prompt", f"prompt too long: "
                            f"{len(prompt_ids)} tokens{held} > max_prompt_length="
                            f"{s.max_prompt_length}")
        room = s.max_length - len(prompt_ids)
        if room < 1:
            raise DataError(record.source, record.row, "prompt", f"prompt too long: "
                            f"{len(prompt_ids)} tokens{held} leave no room in max_length="
                            f"{s.max_length}")
        return [c[:room] for c in completions], sum(len(c) > room for c in completions)

    def pair(self, record: Record, report: DataReport, index: int) -> VisionPair:
        check_columns(record, PAIR_COLUMNS)
        prompt, images = _field(record, "prompt"), row_images(record)
        named = [(n, _field(record, n)) for n in ("chosen", "rejected")]
        if named[0][1] == named[1][1]:
            raise DataError(record.source, record.row, "chosen", "chosen identical to rejected")
        prompt_ids, vision = self.prompt(record, prompt, images)
        (chosen, rejected), cut = self.fit(record, prompt_ids, vision, [
            self.completion(record, prompt, value, name, len(images)) for name, value in named])
        if chosen == rejected:
            raise DataError(record.source, record.row, "chosen",
                            "chosen identical to rejected after truncation")
        report.truncated_completions += cut  # counted only for rows that are kept
        return VisionPair(index, prompt_ids, chosen, rejected, vision, {}, record.source,
                          record.row)

    def sequence(self, record: Record, report: DataReport, index: int) -> VisionSequence:
        check_columns(record, SFT_COLUMNS)
        images = row_images(record)
        if "messages" in record.values:
            messages = _field(record, "messages")
            if not isinstance(messages, list) or len(messages) < 2 or \
                    not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
                raise DataError(record.source, record.row, "messages", "a conversation of at "
                                "least a prompt and a final assistant reply")
            prompt, completion = messages[:-1], messages[-1:]
        else:
            prompt, completion = _field(record, "prompt"), _field(record, "completion")
        prompt_ids, vision = self.prompt(record, prompt, images)
        (ids,), cut = self.fit(record, prompt_ids, vision, [
            self.completion(record, prompt, completion, "completion", len(images))])
        report.truncated_completions += cut
        return VisionSequence(index, prompt_ids, ids, vision, record.source, record.row)


def _note_images(examples: ExampleSet) -> ExampleSet:
    seen = [x.vision for x in examples.items if x.vision is not None]
    examples.report.notes.append(f"{sum(v.num_images for v in seen)} images in "
                                 f"{len(seen)} prompts, "
                                 f"{sum(v.num_image_tokens for v in seen)} image tokens")
    return examples


def build_vision_pairs(records: list[Record], tokenizer: VisionTokenizer,
                       on_bad_rows: OnBadRows = "error",
                       skipped: list[DataError] | None = None) -> ExampleSet:
    """Tokenize every pair row with images (bad rows raise, or are skipped and counted)."""
    return _note_images(build_examples(records, tokenizer.pair, on_bad_rows, skipped=skipped))


def build_vision_sequences(records: list[Record], tokenizer: VisionTokenizer,
                           on_bad_rows: OnBadRows = "error",
                           skipped: list[DataError] | None = None) -> ExampleSet:
    """Tokenize every SFT row with images."""
    return _note_images(build_examples(records, tokenizer.sequence, on_bad_rows,
                                       unit="sequences", skipped=skipped))
