"""Greedy Coordinate Gradient (Zou et al. 2023), universal and batched: one adversarial suffix,
appended to the injected data, that makes the model answer the injected task, optimized over
several prompts at once.

Each step: the gradient of the target's loss with respect to the suffix's one-hot tokens,
summed over the prompts, gives each position's ``top_k`` most promising replacements; a batch
of ``candidates`` suffixes (one position swapped each) is scored exactly and the best kept.
The prompt before the suffix is run once and its key/value cache reused, so a step costs
only the suffix, the template's tail and the target: it fits a CPU.

    >>> GCGSettings().steps
    20
"""

from __future__ import annotations

import copy
import functools
import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .frontend import filter_data


@dataclass(frozen=True)
class GCGSettings:
    steps: int = 20
    suffix_tokens: int = 10
    top_k: int = 64  # replacements considered per position
    candidates: int = 32  # suffixes scored per step
    prompts: int = 4  # prompts the universal suffix is optimized on
    seed: int = 0


@dataclass
class GCGResult:
    suffix: str  # the text appended to the data
    suffix_ids: list[int]
    losses: list[float] = field(default_factory=list)  # the best summed loss after each step


@dataclass
class _Case:
    cache: object  # key/value cache of the prompt before the suffix
    tail: torch.Tensor  # (A + T,) the template's tail, then the target
    target: torch.Tensor  # (T,)


def allowed_tokens(tokenizer, keep: Callable[[str], bool] = lambda s: True) -> torch.Tensor:
    """(V,) bool: printable ASCII tokens that are not special, that the front end's filter
    leaves alone (no ``#``, no reserved delimiter) and that ``keep`` accepts."""
    special = set(tokenizer.all_special_ids)
    ok = torch.zeros(len(tokenizer), dtype=torch.bool)
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        ok[i] = (i not in special and text.strip() != "" and text.isascii()
                 and text.isprintable() and "#" not in text and filter_data(text) == text
                 and keep(text))
    return ok


def _parts(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model, base.get_input_embeddings(), base.get_output_embeddings()


@functools.cache
def _cache_argument(kind: type) -> str:
    """The forward's key/value cache argument: ``cache`` in transformers >= 5.2x,
    ``past_key_values`` before (looked up once per model class)."""
    return "cache" if "cache" in inspect.signature(kind.forward).parameters else "past_key_values"


def _run(decoder, cache=None, **inputs):
    """The decoder's forward with a key/value cache -> (hidden states, cache)."""
    name = _cache_argument(type(decoder))
    out = decoder(**inputs, use_cache=True, **({name: cache} if cache is not None else {}))
    return out.last_hidden_state, getattr(out, name)


@torch.no_grad()
def _case(model, tokenizer, before: str, after: str, target: str) -> _Case:
    decoder, _, _ = _parts(model)
    ids = tokenizer(before, return_tensors="pt")["input_ids"]  # as generation tokenizes it
    cache = _run(decoder, input_ids=ids)[1]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    goal = tokenizer(target, add_special_tokens=False)["input_ids"]
    return _Case(cache, torch.tensor(tail + goal), torch.tensor(goal))


def _losses(model, case: _Case, suffixes: torch.Tensor | None,
            one_hot: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the target's summed NLL after each suffix (ids (B, S), or a one-hot (S, V) with
    gradients)."""
    decoder, embed, head = _parts(model)
    cache = copy.deepcopy(case.cache)
    if one_hot is not None:
        embeds = torch.cat([one_hot @ embed.weight, embed(case.tail)])[None]  # (1, S+A+T, H)
        batch, width = 1, one_hot.shape[0]
    else:
        batch, width = suffixes.shape
        cache.batch_repeat_interleave(batch)
        ids = torch.cat([suffixes, case.tail.expand(batch, -1)], 1)  # (B, S+A+T)
        embeds = embed(ids)
    hidden = _run(decoder, cache, inputs_embeds=embeds)[0]  # (B, S+A+T, H)
    t = len(case.target)
    start = width + len(case.tail) - t - 1  # the position predicting the first target token
    logits = head(hidden[:, start:start + t]).float()  # (B, T, V)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2),
                                            case.target.expand(batch, -1), reduction="none")
    return nll.sum(1)  # (B,)


def universal_suffix(model, tokenizer, cases: Sequence[tuple[str, str, str]],
                     settings: GCGSettings = GCGSettings(),
                     allowed: torch.Tensor | None = None) -> GCGResult:
    """A suffix for prompts ``(before, after, target)``: the attacked prompt is ``before +
    suffix + after`` and the attack succeeds when the model continues with ``target``."""
    rng = random.Random(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    allowed = allowed_tokens(tokenizer) if allowed is None else allowed
    was_training = model.training
    model.eval()
    prepared = [_case(model, tokenizer, *c) for c in cases]
    start = tokenizer(" !" * settings.suffix_tokens, add_special_tokens=False)["input_ids"]
    suffix = torch.tensor(start[:settings.suffix_tokens])  # (S,)
    embed_rows = _parts(model)[1].weight.shape[0]
    result = GCGResult("", [])
    best_loss = float("inf")
    try:
        for _ in range(settings.steps):
            one_hot = torch.zeros(len(suffix), embed_rows)
            one_hot[torch.arange(len(suffix)), suffix] = 1.0
            one_hot.requires_grad_(True)
            for case in prepared:
                _losses(model, case, None, one_hot).sum().backward()
            grad = one_hot.grad[:, :len(allowed)].clone()  # (S, V)
            grad[:, ~allowed] = float("inf")
            top = (-grad).topk(settings.top_k, dim=1).indices  # (S, k)
            candidates = []
            for _ in range(settings.candidates * 2):
                cand = suffix.clone()
                pos = rng.randrange(len(suffix))
                cand[pos] = top[pos, torch.randint(settings.top_k, (1,), generator=gen)]
                text = tokenizer.decode(cand)
                if tokenizer(text, add_special_tokens=False)["input_ids"] == cand.tolist():
                    candidates.append(cand)  # it survives being written out as text
                if len(candidates) == settings.candidates:
                    break
            if not candidates:
                continue
            batch = torch.stack(candidates)  # (B, S)
            with torch.no_grad():
                totals = sum(_losses(model, case, batch) for case in prepared)  # (B,)
            i = int(totals.argmin())
            suffix = batch[i]
            if float(totals[i]) < best_loss:
                best_loss = float(totals[i])
                result.suffix_ids = suffix.tolist()
            result.losses.append(float(totals[i]))
    finally:
        model.train(was_training)
    if not result.suffix_ids:
        result.suffix_ids = suffix.tolist()
    result.suffix = tokenizer.decode(result.suffix_ids)
    return result
