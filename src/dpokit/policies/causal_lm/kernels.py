"""The segment-attention backends (see ``attention.py``) and the plain attention math they
fall back on for soft-capping and sinks.

Every backend: ``(plan, query (R, H, T, D), key / value (R, Hkv, T, D), dropout, scaling,
layer) -> (R, H, T, D)``; ``tests/policies/causal_lm/test_attention.py`` compares each with
the mask, ``test_zoo.py`` every family with its own eager forward.

    >>> q = k = v = torch.randn(1, 2, 3, 4)
    >>> out = plain_attention(q, k, v, None, None, 0.0, LayerAttention())
    >>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    True
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F

from .attention import LayerAttention, SegmentPlan, UnsupportedAttention, layer_attention


def plain_attention(query, key, value, mask, scaling, dropout: float,
                    layer: LayerAttention) -> torch.Tensor:
    """Attention written out, as transformers' eager functions compute it: scores (soft-capped
    before the mask, Gemma 2), masked, a sink logit per head joined to the softmax and dropped
    after it (gpt-oss), softmax in fp32. mask: (B | 1, 1, Tq, Tk) bool (True: visible) or
    additive, or None (causal, bottom-right aligned, with the layer's window)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # (B, H, Tk, D)
    value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # (B, H, Tq, Tk)
    if layer.softcap is not None:
        scores = torch.tanh(scores / layer.softcap) * layer.softcap
    if mask is None:
        tq, tk = scores.shape[-2:]
        q = torch.arange(tq, device=scores.device)[:, None] + (tk - tq)
        k = torch.arange(tk, device=scores.device)[None, :]
        mask = (k <= q) & ((q - k < layer.window) if layer.window else True)  # (Tq, Tk)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask
    if layer.sinks is not None:
        sinks = layer.sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1).to(scores.dtype)
        joined = torch.cat([scores, sinks], dim=-1)  # (B, H, Tq, Tk + 1)
        joined = joined - joined.max(dim=-1, keepdim=True).values
        probs = F.softmax(joined, dim=-1, dtype=joined.dtype)[..., :-1]  # the sink dropped
    else:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0).to(value.dtype)
    return torch.matmul(probs, value)  # (B, H, Tq, D)


def _attend(query, key, value, mask, scaling, dropout, layer: LayerAttention):
    """One piece: SDPA where it computes the layer exactly, else :func:`plain_attention`.
    mask: bool (Tq, Tk) / (B, 1, Tq, Tk), additive, or None (causal)."""
    if layer.plain_math:
        return plain_attention(query, key, value, mask, scaling, dropout, layer)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
        is_causal=mask is None, enable_gqa=key.shape[1] != query.shape[1])


def _band(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """(Tq, Tk) bool: causal by position, within the window."""
    rule = k_pos[None, :] <= q_pos[:, None]
    return rule if window is None else rule & (q_pos[:, None] - k_pos[None, :] < window)


def sdpa_segments(plan: SegmentPlan, query, key, value, dropout: float, scaling,
                  layer: LayerAttention):
    """One attention call per segment (the plain twin); padding positions get zeros."""
    rows, device, window = [], query.device, layer.window
    for r, segments in enumerate(plan.segments):
        pieces, used = [], 0
        for start, p, c, n in segments:
            head = slice(start, start + p + c)
            ahead = torch.arange(p + c, device=device)
            banded = (window is not None and p + c > window) or layer.plain_math
            pieces.append(_attend(
                query[r:r + 1, :, head], key[r:r + 1, :, head], value[r:r + 1, :, head],
                _band(ahead, ahead, window) if banded else None, scaling, dropout,
                layer))  # (1, H, P+C, D)
            if n:
                tail = slice(start + p + c, start + p + c + n)
                k2 = torch.cat([key[r:r + 1, :, start:start + p], key[r:r + 1, :, tail]], dim=2)
                v2 = torch.cat([value[r:r + 1, :, start:start + p], value[r:r + 1, :, tail]],
                               dim=2)  # (1, Hkv, P+n, D); key index = position
                mask = _band(torch.arange(p, p + n, device=device),
                             torch.arange(p + n, device=device), window)  # (n, P+n)
                pieces.append(_attend(query[r:r + 1, :, tail], k2, v2, mask, scaling, dropout,
                                      layer))  # (1, H, n, D)
            used = start + p + c + n
        if used < query.shape[2]:
            pieces.append(query.new_zeros(1, query.shape[1], query.shape[2] - used,
                                          value.shape[-1]))
        rows.append(torch.cat(pieces, dim=2))  # (1, H, T, D)
    return torch.cat(rows, dim=0)  # (R, H, T, D)


def dense_mask(plan: SegmentPlan, query, key, value, dropout: float, scaling,
               layer: LayerAttention):
    """The plain twin: the layer's dense (R, 1, T, T) rule, one call for the whole batch."""
    if layer.plain_math:
        return plain_attention(query, key, value, plan.bool_mask(layer.window), scaling,
                               dropout, layer)
    return _attend(query, key, value, plan.additive_mask(layer.window, query.dtype), scaling,
                   dropout, layer)


_compiled_flex: dict[str, Any] = {}


def flex_kernel(device_type: str):
    """FlexAttention, compiled where torch.compile builds it (CUDA); eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda":
        return flex_attention
    if "cuda" not in _compiled_flex:
        _compiled_flex["cuda"] = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex["cuda"]


def flex(plan: SegmentPlan, query, key, value, dropout: float, scaling, layer: LayerAttention):
    if dropout:
        raise ValueError("attention_impl=flex has no attention dropout; use sdpa_segments")
    if layer.sinks is not None:
        raise UnsupportedAttention("attention_impl=flex does not apply attention sinks (s_aux, "
                                   "gpt-oss); use sdpa_segments or mask")
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        raise ValueError("attention_impl=flex: torch has no FlexAttention backward on the CPU; "
                         "use attention_impl=auto (mask) or sdpa_segments")
    cap = layer.softcap
    score_mod = None if cap is None else (lambda s, b, h, q, k: torch.tanh(s / cap) * cap)
    return flex_kernel(query.device.type)(
        query, key, value, score_mod=score_mod, block_mask=plan.block_mask(layer.window),
        scale=scaling, enable_gqa=key.shape[1] != query.shape[1])  # (R, H, T, D)


def varlen_kernel():
    """flash-attn's varlen function (a test substitutes a reference implementation)."""
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def flash_varlen(plan: SegmentPlan, query, key, value, dropout: float, scaling,
                 layer: LayerAttention):
    if layer.sinks is not None:
        raise UnsupportedAttention("attention_impl=flash_varlen does not apply attention sinks "
                                   "(s_aux, gpt-oss); use sdpa_segments or mask")
    index, kernel = plan.varlen(), varlen_kernel()
    options = {"dropout_p": dropout, "softmax_scale": scaling, "causal": True,
               "window_size": (layer.window - 1, 0) if layer.window else (-1, -1),
               "softcap": layer.softcap or 0.0}
    rows, heads, length, dim = query.shape
    q = query.transpose(1, 2).reshape(rows * length, heads, dim)  # (R·T, H, D)
    k = key.transpose(1, 2).reshape(rows * length, key.shape[1], dim)  # (R·T, Hkv, D)
    v = value.transpose(1, 2).reshape(rows * length, value.shape[1], value.shape[-1])
    out = q.new_zeros(rows * length, heads, value.shape[-1])  # (R·T, H, D); padding stays 0
    first = kernel(q[index.first], k[index.first], v[index.first], index.cu_first,
                   index.cu_first, index.max_first, index.max_first, **options)  # (ΣP+C, H, D)
    out = out.index_copy(0, index.first, first)
    if index.second_q.numel():
        second = kernel(q[index.second_q], k[index.second_k], v[index.second_k],
                        index.cu_second_q, index.cu_second_k, index.max_second_q,
                        index.max_second_k, **options)  # (Σn, H, D): bottom-right aligned
        out = out.index_copy(0, index.second_q, second)
    return out.view(rows, length, heads, -1).transpose(1, 2)  # (R, H, T, D)


BACKENDS = {"sdpa_segments": sdpa_segments, "flex": flex, "flash_varlen": flash_varlen,
            "mask": dense_mask}


def unplanned(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
              **kwargs):
    """A call without a plan on an eager-loaded family (padded batches, generation): its own
    ``eager_attention_forward`` (soft-caps, sinks, whatever else it computes) with every
    keyword; a family without one gets :func:`plain_attention`, which refuses keywords it does
    not implement."""
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is not None:
        return own(module, query, key, value, attention_mask, dropout=dropout,
                   scaling=scaling, **kwargs)
    out = plain_attention(query, key, value, attention_mask, scaling,
                          dropout if module.training else 0.0, layer_attention(module, **kwargs))
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs):
    """query (R, H, T, D), key/value (R, Hkv, T, D) -> ((R, T, H, D), None), as transformers'
    attention functions return."""
    plan = kwargs.pop("dpokit_plan")
    layer = layer_attention(module, **kwargs)
    plan.calls += 1
    plan.windows.append(layer.window)
    dropout = dropout if module.training else 0.0
    out = BACKENDS[plan.impl](plan, query, key, value, dropout, scaling, layer)
    return out.transpose(1, 2).contiguous(), None  # (R, T, H, D)


_own: dict[str, Any] = {}  # transformers' own SDPA, once its entry is wrapped


def _or_plan(without_plan):
    """An attention entry, dpokit-aware: a call with a plan is segment attention, any other is
    ``without_plan`` (transformers' own SDPA; the family's own eager function, :func:`unplanned`)
    with every keyword, untouched."""
    def attend(module, query, key, value, attention_mask, **kwargs):
        if kwargs.get("dpokit_plan") is not None:
            return segment_attention(module, query, key, value, attention_mask, **kwargs)
        kwargs.pop("dpokit_plan", None)
        return without_plan(module, query, key, value, attention_mask, **kwargs)

    return attend


def enable(model) -> bool:
    """Let ``model`` (a transformers model) take a segment plan; False if it cannot: a family
    outside transformers' attention interface (Bloom, MPT, Falcon, StableLM, the state-space
    models) or an implementation other than sdpa / eager.

    The model keeps its implementation and its name (families branch on it: DeepSeek-V3.2's
    and HY-V4's sparse indexers build their masks only under "eager" / "sdpa"): transformers'
    ``sdpa`` and ``eager`` entries are wrapped once, so that a call with a plan is segment
    attention and any other what it was (SDPA; the family's own eager function). A family that
    calls its eager function without looking it up never sees the plan: the scorer's count of
    calls refuses it (:func:`~.families.check_consumed`)."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError:
        return False
    if not getattr(type(model), "_supports_attention_backend", False):
        return False
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if not _own:
        _own["sdpa"] = sdpa_attention_forward
        AttentionInterface.register("sdpa", _or_plan(sdpa_attention_forward))
        AttentionInterface.register("eager", _or_plan(unplanned))
    return True
