"""Sampling K completions per prompt from a causal LM: batched, left-padded, KV cache.

Prompts are rendered with the chat template (``chat``) when the tokenizer has one, repeated K
times, and generated in batches of ``batch_size`` sequences with ``model.generate`` (KV cache
on). Each batch has its own seed (``seed`` + batch number), so a run is reproducible for a
given batch size. A sample records whether it ended with EOS (``finished``) or hit
``max_new_tokens``.

    >>> settings = SamplingSettings(num_samples=4, temperature=0.8, top_p=0.95)
    >>> samples = sample_completions(model, tokenizer, ["Hi!"], settings)  # doctest: +SKIP
    >>> len(samples[0]), samples[0][0].text                                # doctest: +SKIP
    (4, 'Hello! How can I help you today?')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...core.signals import cooperative, stop_point
from ...core.types import AT_LEAST_ONE, NON_NEGATIVE, Domain
from ...data.builders.common import option


@dataclass(frozen=True)
class SamplingSettings:
    num_samples: int = option(2, "completions sampled per prompt", AT_LEAST_ONE)
    max_new_tokens: int = option(64, "tokens per completion at most", AT_LEAST_ONE)
    temperature: float = option(1.0, "sampling temperature (0: greedy)", NON_NEGATIVE)
    top_p: float = option(1.0, "nucleus sampling mass", Domain(0.0, 1.0, high_inclusive=True))
    seed: int = option(0, "seeds sampling (each batch: seed + its number)", NON_NEGATIVE)
    batch_size: int = option(16, "sequences per generate call", AT_LEAST_ONE)
    chat: bool = option(True, "render prompts with the chat template when the tokenizer has one")


@dataclass(frozen=True)
class Sample:
    """One completion: its text, its token count, whether it ended with EOS, the prompt's token
    ids as the model saw them, and the generated ids (with the EOS when ``finished``), so the
    sample can be scored exactly as drawn."""

    text: str
    num_tokens: int
    finished: bool
    prompt_ids: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()


def render_prompt(tokenizer, prompt: Any, chat: bool = True) -> str:
    """The text the model continues: a string or message list through the chat template, or
    the raw string when ``chat`` is off or the tokenizer has none."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ValueError("a message-list prompt needs a tokenizer with a chat template")
    return prompt


def stop_ids(tokenizer) -> set[int]:
    """The ids that end a sample (EOS, and the pad id, which some models emit at the end)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return ids | ({tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else set())


def prompt_ids(tokenizer, prompts: Sequence[Any], chat: bool) -> list[list[int]]:
    """The token ids each prompt is continued from (the chat template's text, tokenized
    without adding special tokens again)."""
    special = not (chat and getattr(tokenizer, "chat_template", None))
    return [tokenizer(render_prompt(tokenizer, p, chat), add_special_tokens=special)["input_ids"]
            for p in prompts]


def to_sample(tokenizer, prompt: Sequence[int], tokens: list[int], stop: set[int]) -> Sample:
    """A drawn continuation as a :class:`Sample`: cut at the first stop id (kept in
    ``token_ids``, so the sample can be scored as drawn), decoded without special tokens."""
    end = next((t for t, tok in enumerate(tokens) if tok in stop), None)
    kept = tokens if end is None else tokens[:end]
    drawn = tokens if end is None else tokens[:end + 1]
    return Sample(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept),
                  end is not None, tuple(prompt), tuple(drawn))


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: Sequence[Any], settings: SamplingSettings,
                       progress: Callable | None = None) -> list[list[Sample]]:
    """``settings.num_samples`` samples for each prompt, in prompt order."""
    encoded_prompts = prompt_ids(tokenizer, prompts, settings.chat)
    jobs = [i for i in range(len(prompts)) for _ in range(settings.num_samples)]
    batches = [jobs[i:i + settings.batch_size] for i in range(0, len(jobs), settings.batch_size)]
    device = next(model.parameters()).device
    stop = stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    out: list[list[Sample]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    # seed per batch without touching the caller's random stream (training resumes exactly)
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), cooperative():
            for number, batch in enumerate(progress(batches) if progress else batches):
                stop_point("sampling")  # SIGINT / SIGTERM: stop within one batch
                encoded = [encoded_prompts[i] for i in batch]
                width = max(len(ids) for ids in encoded)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (N, P)
                mask = torch.zeros((len(batch), width), dtype=torch.long)  # (N, P), left padding
                for row, ids in enumerate(encoded):
                    input_ids[row, width - len(ids):] = torch.tensor(ids)
                    mask[row, width - len(ids):] = 1
                torch.manual_seed(settings.seed + number)
                sampling = settings.temperature > 0
                generated = model.generate(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device),
                    max_new_tokens=settings.max_new_tokens, do_sample=sampling,
                    temperature=settings.temperature if sampling else None,
                    top_p=settings.top_p if sampling else None, top_k=None,
                    pad_token_id=pad_id, use_cache=True,
                )[:, width:].cpu()  # (N, new tokens)
                for row, i in enumerate(batch):
                    out[i].append(to_sample(tokenizer, encoded[row], generated[row].tolist(),
                                            stop))
    finally:
        model.train(was_training)
    return out
