"""Attention for packed and prefix-shared rows, from a plan built once per batch.

A packed row holds segments back to back; a prefix-shared segment is
``[prompt (P) | chosen (C) | rejected (R)]``: prompt + first completion attend causally, the
second completion attends to the prompt's keys and causally to its own, never to the first.
The rule is built once per batch (:class:`SegmentPlan`) and every layer reuses it:

- ``flex``: FlexAttention with a ``BlockMask`` from a document + shared-prefix ``mask_mod``
  (compiled on CUDA; torch has no FlexAttention backward on the CPU, so there it serves
  forward-only passes); GQA without copies (``enable_gqa``).
- ``flash_varlen``: flash-attn's ``flash_attn_varlen_func`` (CUDA): one call over every
  prompt + first completion (causal), one over every second completion against
  ``[prompt keys | own keys]`` with bottom-right causal alignment; GQA native.
- ``sdpa_segments``: one causal SDPA call per segment (``enable_gqa``, no key copies): the
  CPU's choice under ``auto``. No one-call kernel there skips masked blocks with a backward
  (FlexAttention has none on the CPU), and measured per layer on an AVX2 EPYC (fp32, forward +
  backward, SmolLM2's heads) the loop is as fast as the dense mask on short rows (15 vs 18 ms
  at 200 tokens) and twice as fast on long ones (0.34 vs 0.67 s at 2,850).
- ``mask``: the plain twin, the dense (R, 1, T, T) mask through the model's own SDPA path: one
  call per layer, every query-key pair computed and most masked.

Registered with transformers as the attention implementation ``"dpokit_sdpa"``; the plan
arrives through the model's keyword arguments (``dpokit_plan``), and without one (generation,
padded batches) plain SDPA runs. ``tests/policies/causal_lm/test_attention.py`` compares every
backend with the mask.

    >>> plan = SegmentPlan([[(0, 2, 1, 1)]], length=4)
    >>> plan.bool_mask()[0, 0].int().tolist()   # rejected (t=3) sees the prompt, not chosen
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

NAME = "dpokit_sdpa"
IMPLS = ("auto", "flex", "flash_varlen", "sdpa_segments", "mask")
Segment = tuple[int, int, int, int]  # (start in row, prompt length, first completion, second)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(requested: str, device_type: str) -> str:
    """The backend ``auto`` stands for on a device: CUDA runs flash-attn's varlen kernel when
    it is installed, else compiled FlexAttention; a CPU or an Apple GPU one SDPA call per
    segment (measured faster there than the one-call dense mask, see the module's notes).

    >>> resolve_impl("auto", "cpu"), resolve_impl("mask", "cuda")
    ('sdpa_segments', 'mask')
    """
    if requested not in IMPLS:
        raise ValueError(f"attention_impl={requested!r}: must be one of {IMPLS}")
    if requested != "auto":
        return requested
    if device_type == "cuda":
        return "flash_varlen" if flash_attn_available() else "flex"
    return "sdpa_segments"


def visible(doc_q, doc_k, branch_q, branch_k, q, k) -> torch.Tensor:
    """The attention rule, elementwise: a query sees a key of its own segment at or before it,
    except a second completion's query a first completion's key (branch 2 vs 1)."""
    return (doc_q == doc_k) & (q >= k) & ~((branch_q == 2) & (branch_k == 1))


@dataclass
class VarlenIndex:
    """Flat token indices (into R·T) for the two varlen calls, and their sequence offsets.

    first: every prompt + first completion, back to back; cu_first (n_seg + 1,) offsets.
    second_q: every second completion; second_k: per segment its prompt then its second
    completion; cu_second_q / cu_second_k offsets (segments without one are left out)."""

    first: torch.Tensor
    cu_first: torch.Tensor
    max_first: int
    second_q: torch.Tensor
    second_k: torch.Tensor
    cu_second_q: torch.Tensor
    cu_second_k: torch.Tensor
    max_second_q: int
    max_second_k: int


@dataclass
class SegmentPlan:
    """The attention rule of one batch, built once and shared by every layer.

    segments: per row, (start, prompt, first completion, second completion) lengths; length:
    T; impl: the resolved backend. Per-token ``doc`` (R, T) (segment number in the batch, -1
    for padding) and ``branch`` (R, T) (0 prompt, 1 first, 2 second) define the rule:
    same document, causal, and a second completion never sees a first one."""

    segments: list[list[Segment]]
    length: int
    impl: str = "sdpa_segments"
    device: torch.device | str = "cpu"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def _tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        if "doc" not in self._cache:
            rows = len(self.segments)
            doc = torch.full((rows, self.length), -1, dtype=torch.long)  # (R, T)
            branch = torch.zeros(rows, self.length, dtype=torch.long)  # (R, T)
            number = 0
            for r, segments in enumerate(self.segments):
                for start, p, c, n in segments:
                    doc[r, start:start + p + c + n] = number
                    branch[r, start + p:start + p + c] = 1
                    branch[r, start + p + c:start + p + c + n] = 2
                    number += 1
            self._cache["doc"] = doc.to(self.device)
            self._cache["branch"] = branch.to(self.device)
        return self._cache["doc"], self._cache["branch"]

    def bool_mask(self) -> torch.Tensor:
        """(R, 1, T, T) bool, True where a query may attend to a key (padding sees itself):
        the rule evaluated densely (the flex mask_mod evaluates it per block)."""
        if "mask" not in self._cache:
            doc, branch = self._tokens()
            t = torch.arange(self.length, device=doc.device)
            self._cache["mask"] = visible(doc[:, :, None], doc[:, None, :], branch[:, :, None],
                                          branch[:, None, :], t[:, None], t[None, :])[:, None]
        return self._cache["mask"]  # (R, 1, T, T)

    def block_mask(self):
        """FlexAttention's BlockMask of the rule (built once per batch)."""
        if "block" not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            doc, branch = self._tokens()

            def mask_mod(b, h, q, k):
                return visible(doc[b, q], doc[b, k], branch[b, q], branch[b, k], q, k)

            self._cache["block"] = create_block_mask(mask_mod, len(self.segments), None,
                                                     self.length, self.length,
                                                     device=str(doc.device))
        return self._cache["block"]

    def varlen(self) -> VarlenIndex:
        """The two varlen calls' token indices (built once per batch)."""
        if "varlen" in self._cache:
            return self._cache["varlen"]
        first, second_q, second_k = [], [], []
        len_first, len_q, len_k = [], [], []
        for r, segments in enumerate(self.segments):
            base = r * self.length
            for start, p, c, n in segments:
                first.append(torch.arange(base + start, base + start + p + c))
                len_first.append(p + c)
                if n:
                    tail = torch.arange(base + start + p + c, base + start + p + c + n)
                    second_q.append(tail)
                    second_k += [torch.arange(base + start, base + start + p), tail]
                    len_q.append(n)
                    len_k.append(p + n)

        def offsets(lengths: list[int]) -> torch.Tensor:
            return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).int()

        empty = torch.zeros(0, dtype=torch.long)
        index = VarlenIndex(
            torch.cat(first).to(self.device), offsets(len_first).to(self.device),
            max(len_first), torch.cat(second_q or [empty]).to(self.device),
            torch.cat(second_k or [empty]).to(self.device), offsets(len_q).to(self.device),
            offsets(len_k).to(self.device), max(len_q, default=0), max(len_k, default=0))
        self._cache["varlen"] = index
        return index


# --- the backends: query (R, H, T, D), key / value (R, Hkv, T, D) -> (R, H, T, D) ---------

def _sdpa_segments(plan: SegmentPlan, query, key, value, dropout: float, scaling):
    """One causal SDPA call per segment (the plain twin); padding positions get zeros."""
    gqa = key.shape[1] != query.shape[1]
    rows = []
    for r, segments in enumerate(plan.segments):
        pieces, used = [], 0
        for start, p, c, n in segments:
            head = slice(start, start + p + c)
            pieces.append(F.scaled_dot_product_attention(
                query[r:r + 1, :, head], key[r:r + 1, :, head], value[r:r + 1, :, head],
                dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa))  # (1,H,P+C,D)
            if n:
                tail = slice(start + p + c, start + p + c + n)
                k2 = torch.cat([key[r:r + 1, :, start:start + p], key[r:r + 1, :, tail]], dim=2)
                v2 = torch.cat([value[r:r + 1, :, start:start + p], value[r:r + 1, :, tail]],
                               dim=2)  # (1, Hkv, P+n, D)
                visible = torch.ones(n, p + n, dtype=torch.bool, device=query.device)  # (n, P+n)
                visible[:, p:] = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
                pieces.append(F.scaled_dot_product_attention(
                    query[r:r + 1, :, tail], k2, v2, attn_mask=visible, dropout_p=dropout,
                    scale=scaling, enable_gqa=gqa))  # (1, H, n, D)
            used = start + p + c + n
        if used < query.shape[2]:
            pieces.append(query.new_zeros(1, query.shape[1], query.shape[2] - used,
                                          value.shape[-1]))
        rows.append(torch.cat(pieces, dim=2))  # (1, H, T, D)
    return torch.cat(rows, dim=0)  # (R, H, T, D)


_compiled_flex: dict[str, Any] = {}


def flex_kernel(device_type: str):
    """FlexAttention, compiled where torch.compile builds it (CUDA); eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda":
        return flex_attention
    if "cuda" not in _compiled_flex:
        _compiled_flex["cuda"] = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex["cuda"]


def _flex(plan: SegmentPlan, query, key, value, dropout: float, scaling):
    if dropout:
        raise ValueError("attention_impl=flex has no attention dropout; use sdpa_segments")
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        raise ValueError("attention_impl=flex: torch has no FlexAttention backward on the CPU; "
                         "use attention_impl=auto (mask) or sdpa_segments")
    kernel = flex_kernel(query.device.type)
    return kernel(query, key, value, block_mask=plan.block_mask(), scale=scaling,
                  enable_gqa=key.shape[1] != query.shape[1])  # (R, H, T, D)


def varlen_kernel():
    """flash-attn's varlen function (a test substitutes a reference implementation)."""
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _flash_varlen(plan: SegmentPlan, query, key, value, dropout: float, scaling):
    index, kernel = plan.varlen(), varlen_kernel()
    rows, heads, length, dim = query.shape
    q = query.transpose(1, 2).reshape(rows * length, heads, dim)  # (R·T, H, D)
    k = key.transpose(1, 2).reshape(rows * length, key.shape[1], dim)  # (R·T, Hkv, D)
    v = value.transpose(1, 2).reshape(rows * length, value.shape[1], value.shape[-1])
    out = q.new_zeros(rows * length, heads, value.shape[-1])  # (R·T, H, D); padding stays 0
    first = kernel(q[index.first], k[index.first], v[index.first], index.cu_first,
                   index.cu_first, index.max_first, index.max_first, dropout_p=dropout,
                   softmax_scale=scaling, causal=True)  # (sum P+C, H, D)
    out = out.index_copy(0, index.first, first)
    if index.second_q.numel():
        second = kernel(q[index.second_q], k[index.second_k], v[index.second_k],
                        index.cu_second_q, index.cu_second_k, index.max_second_q,
                        index.max_second_k, dropout_p=dropout, softmax_scale=scaling,
                        causal=True)  # (sum n, H, D): bottom-right aligned, sees its prompt
        out = out.index_copy(0, index.second_q, second)
    return out.view(rows, length, heads, -1).transpose(1, 2)  # (R, H, T, D)


BACKENDS = {"sdpa_segments": _sdpa_segments, "flex": _flex, "flash_varlen": _flash_varlen}


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs):
    """query (R, H, T, D), key/value (R, Hkv, T, D) -> ((R, T, H, D), None), as transformers'
    attention functions return."""
    plan = kwargs.pop("dpokit_plan", None)
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    dropout = dropout if module.training else 0.0
    out = BACKENDS[plan.impl](plan, query, key, value, dropout, scaling)  # (R, H, T, D)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def enable(model) -> bool:
    """Let ``model`` (a transformers model) take a segment plan; False if it cannot (an
    attention implementation other than sdpa/eager, or no attention interface)."""
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
