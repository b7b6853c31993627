"""Deterministic train/eval split by prompt: no prompt lands in both splits.

Each distinct prompt gets a rank from a hash of (seed, prompt), independent of file order;
the lowest ranked ``fraction`` of prompts (rounded; at least one, never all) go to eval with every
row that carries them.

    >>> rows = [{"prompt": p, "chosen": "a", "rejected": "b"} for p in "xxyyzz"]
    >>> s = split_by_prompt(rows, 0.34, seed=0)
    >>> len(s.train) + len(s.eval), s.prompts_eval, {r["prompt"] for r in s.eval} & {
    ...     r["prompt"] for r in s.train}
    (6, 1, set())
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .io import Record


def prompt_key(prompt: Any) -> str:
    """The identity of a prompt (a string, or a message list, compared by content)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def row_prompt(values: Mapping[str, Any]) -> Any:
    """What a row asks: its ``prompt`` (an image-preference row's ``caption``); for a
    conversation, every message before the last; for a plain-text row, the row itself (each
    row its own prompt)."""
    if "prompt" in values:
        return values["prompt"]
    if "caption" in values:
        return values["caption"]
    messages = values.get("messages")
    if isinstance(messages, list) and len(messages) > 1:
        return messages[:-1]
    return dict(values)


@dataclass
class PromptSplit:
    train: list[Any]  # the input rows (Records stay Records), in input order
    eval: list[Any]
    prompts_train: int
    prompts_eval: int


def split_by_prompt(rows: Iterable[Record | Mapping[str, Any]], fraction: float,
                    seed: int = 0) -> PromptSplit:
    if not 0 < fraction < 1:
        raise ValueError(f"eval fraction must be in (0, 1), got {fraction}")
    rows = list(rows)

    def key(row) -> str:
        return prompt_key(row_prompt(row.values if isinstance(row, Record) else row))

    keys = sorted({key(r) for r in rows},
                  key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    if len(keys) < 2:
        raise ValueError(f"cannot split by prompt: {len(keys)} distinct prompt(s)")
    n_eval = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    held = set(keys[:n_eval])
    train = [r for r in rows if key(r) not in held]
    evaluation = [r for r in rows if key(r) in held]
    return PromptSplit(train, evaluation, len(keys) - n_eval, n_eval)
