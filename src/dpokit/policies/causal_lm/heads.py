"""The model's own head: what a family does between its body and its logits, proved on the
model rather than assumed from its config.

Most families end in a bias-free linear layer (the chunked head's fast path); many transform
its logits (Gemma 2 / 3 / 4 soft-cap them at ``final_logit_softcapping``, Granite divides by
``logits_scaling``, Cohere multiplies by ``logit_scale``, Falcon-H1 by ``lm_head_multiplier``,
RecurrentGemma soft-caps at ``logits_soft_cap``, xLSTM at ``output_logit_soft_cap``); some run
more than their output embeddings (BERT-style decoders' prediction transform, RemBERT's
projection, MusicGen's list of heads) or name a setting they do not apply (MPT's
``logit_scale``). :func:`resolve_head` runs four tokens through the model's own forward and
through the body + output embeddings, and keeps the transforms that reproduce its logits;
where none do, the head is the model's own forward (``padded`` only: its logits for every
position).

    >>> from types import SimpleNamespace
    >>> head_transforms(SimpleNamespace(logits_scaling=8.0, logit_scale=None))
    (('divide', 8.0),)
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ...core.modules import eval_mode
from .families import padding_sensitive
from .logprobs import log_sum_sq_from_logits, token_stats

# (config attribute, what it does), in the order a family applies them
HEAD_TRANSFORMS = (("final_logit_softcapping", "softcap"), ("logits_soft_cap", "softcap"),
                   ("output_logit_soft_cap", "softcap"), ("logits_scaling", "divide"),
                   ("logit_scale", "multiply"), ("lm_head_multiplier", "multiply"))
Transforms = tuple[tuple[str, float], ...]


def head_transforms(config) -> Transforms:
    """The (kind, value) transforms ``config`` names (identities left out)."""
    found = []
    for name, kind in HEAD_TRANSFORMS:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value and (
                kind == "softcap" or value != 1):
            found.append((kind, float(value)))
    return tuple(found)


def apply_head_transforms(logits: torch.Tensor, transforms: Transforms) -> torch.Tensor:
    """(c, V) fp32 logits through the family's transforms."""
    for kind, value in transforms:
        if kind == "softcap":
            logits = torch.tanh(logits / value) * value
        elif kind == "divide":
            logits = logits / value
        else:
            logits = logits * value
    return logits


def _forward(module, ids, **extra):
    try:
        return module(input_ids=ids, use_cache=False, **extra)
    except TypeError:  # a family whose forward takes no use_cache
        return module(input_ids=ids, **extra)


_RESOLVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its transforms


def resolve_head(base: nn.Module, decoder: nn.Module) -> Transforms | None:
    """The transforms after ``base``'s output embeddings that give its own logits (checked on
    four tokens, once per model object), or None: its head is more than that (score through
    its own forward)."""
    if base not in _RESOLVED:
        _RESOLVED[base] = _resolve(base, decoder)
    return _RESOLVED[base]


@torch.no_grad()
def _resolve(base: nn.Module, decoder: nn.Module) -> Transforms | None:
    head = base.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(head, nn.Module) or not isinstance(weight, torch.Tensor) or \
            weight.device.type == "meta":
        return None
    ids = (torch.arange(1, 5, device=weight.device) % weight.shape[0])[None]  # (1, 4)
    try:
        with eval_mode(base):
            own = _forward(base, ids).logits[0].float()  # (4, V)
            raw = head(_forward(decoder, ids).last_hidden_state[0]).float()  # (4, V)
    except Exception:  # noqa: BLE001 (a head this cannot call is a head to run whole)
        return None
    tolerance = (1e-4 if weight.dtype == torch.float32 else 3e-2) * (1 + own.abs().max())
    for transforms in dict.fromkeys((head_transforms(base.config), ())):
        if raw.shape == own.shape and (apply_head_transforms(raw, transforms) -
                                       own).abs().max() <= tolerance:
            return transforms
    return None


_PADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> pads exactly


@torch.no_grad()
def pads_exactly(base: nn.Module, decoder: nn.Module) -> bool:
    """Whether a right-padded row (with its 2-D mask) gives the body's states of the same row
    alone: checked once per model on six tokens; False where padding leaks (a sparse indexer
    picking padded keys: refused without a forward) or a padded batch does not run (XLNet)."""
    if base not in _PADS and padding_sensitive(base) is not None:
        _PADS[base] = False
    if base not in _PADS:
        weight = next(base.parameters())
        ids = (torch.arange(1, 7, device=weight.device) % 2 + 3)[None]  # (1, 6)
        ids = torch.cat([ids, ids.roll(1, 1)])  # (2, 6), the second row's last 3 padding
        mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3], device=weight.device)
        try:
            with eval_mode(base):
                both = _forward(decoder, ids, attention_mask=mask).last_hidden_state
                alone = _forward(decoder, ids[1:, :3]).last_hidden_state
            tolerance = 1e-4 if weight.dtype == torch.float32 else 3e-2
            _PADS[base] = bool((both[1, :3] - alone[0]).abs().max() <= tolerance * (
                1 + alone.abs().max()))
        except Exception:  # noqa: BLE001 (a body that cannot take a padded batch)
            _PADS[base] = False
    return _PADS[base]


def own_token_logps(model, input_ids, attention_mask, score_source, score_target,
                    stats: torch.Tensor | None = None, model_inputs=None, by_row: bool = False):
    """(N,) fp32 log-probs of a padded batch's scored tokens from ``model``'s own forward (all
    its logits: the plain way, for heads :func:`resolve_head` cannot reproduce), and (N,)
    log sum p^2 (WPO's norm, detached); ``by_row``: each row alone, unpadded."""
    if by_row:
        length = input_ids.shape[1]
        rows = [model(input_ids=input_ids[r:r + 1, :int(n)]).logits[0]
                for r, n in enumerate(attention_mask.sum(1).tolist())]  # (n_r, V) each
        picked = torch.stack([rows[int(s) // length][int(s) % length]
                              for s in score_source]).float()  # (N, V)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       **(model_inputs or {})).logits  # (R, T, V)
        picked = logits.reshape(-1, logits.shape[-1])[score_source].float()  # (N, V)
    logps = torch.log_softmax(picked, -1).gather(1, score_target[:, None]).squeeze(1)  # (N,)
    detached = picked.detach()
    if stats is not None:
        stats.copy_(token_stats(detached, torch.logsumexp(detached, -1), score_target))
    return logps, log_sum_sq_from_logits(detached)
