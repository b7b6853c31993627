"""Segment-aware attention for packed and prefix-shared rows (the fast twin of the 4-D mask).

A packed row holds segments back to back; a prefix-shared segment is
``[prompt (P) | chosen (C) | rejected (R)]``. With a dense 4-D mask, SDPA computes every
query-key pair of the row and masks most of them away. Here each segment runs on its own:

- prompt + first completion: causal SDPA over P + C tokens (the kernel skips the upper triangle);
- second completion: its R queries against the P prompt keys and its own R keys, causal.

Registered with transformers as the attention implementation ``"dpokit_sdpa"``; it receives the
segment plan through the model's keyword arguments (``dpokit_segments``) and falls back to
plain SDPA when none is given (generation, evaluation of other layouts).
``tests/test_layouts.py`` checks it against the 4-D mask for values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "dpokit_sdpa"
Segment = tuple[int, int, int, int]  # (start in row, prompt length, first completion, second)


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs):
    """query (R, H, T, D), key/value (R, Hkv, T, D) -> ((R, T, H, D), None), as transformers'
    attention functions return. Positions outside every segment (padding) get zeros."""
    plan = kwargs.pop("dpokit_segments", None)
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: share each key/value head across its group
        key = key.repeat_interleave(groups, dim=1)  # (R, H, T, D)
        value = value.repeat_interleave(groups, dim=1)
    dropout = dropout if module.training else 0.0
    rows = []
    for r, segments in enumerate(plan):
        pieces, used = [], 0
        for start, p, c, n in segments:
            head = slice(start, start + p + c)
            q, k, v = query[r:r + 1, :, head], key[r:r + 1, :, head], value[r:r + 1, :, head]
            pieces.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                         is_causal=True))  # (1, H, P+C, D)
            if n:
                tail = slice(start + p + c, start + p + c + n)
                k2 = torch.cat([key[r:r + 1, :, start:start + p], key[r:r + 1, :, tail]], dim=2)
                v2 = torch.cat([value[r:r + 1, :, start:start + p], value[r:r + 1, :, tail]], dim=2)
                visible = torch.ones(n, p + n, dtype=torch.bool, device=query.device)  # (n, P+n)
                visible[:, p:] = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
                pieces.append(F.scaled_dot_product_attention(
                    query[r:r + 1, :, tail], k2, v2, attn_mask=visible, dropout_p=dropout,
                    scale=scaling))  # (1, H, n, D)
            used = start + p + c + n
        if used < query.shape[2]:
            pieces.append(
                query.new_zeros(1, query.shape[1], query.shape[2] - used, value.shape[-1])
            )
        rows.append(torch.cat(pieces, dim=2))  # (1, H, T, D)
    out = torch.cat(rows, dim=0)  # (R, H, T, D)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def enable(model) -> bool:
    """Switch ``model`` (a transformers model) to segment attention; False if it cannot be
    (an attention implementation other than sdpa/eager, or no attention interface)."""
    global _registered
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", "eager", NAME):
        return False
    if not _registered:
        AttentionInterface.register(NAME, segment_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    model.set_attn_implementation(NAME)
    return True
