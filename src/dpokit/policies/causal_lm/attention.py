"""Attention for packed and prefix-shared rows, from a plan built once per batch.

A packed row holds segments back to back; a prefix-shared segment is
``[prompt (P) | chosen (C) | rejected (R)]``: prompt + first completion attend causally, the
second completion attends to the prompt's keys and causally to its own, never to the first.
The rule is built once per batch (:class:`SegmentPlan`) and every layer reuses it, with what
that layer's attention asks for (:class:`LayerAttention`): a sliding window (Mistral, Gemma
2/3/4, gpt-oss, Qwen2, Phi-3, ...: a key is visible while ``pos_q - pos_k < window``, positions
being each sequence's own, so a prefix-shared rejected token measures its distance to the
prompt as if it ran alone), attention-logit soft-capping (Gemma 2) and attention sinks (gpt-oss:
one extra logit per head in the softmax). The backends (``kernels.py``):

- ``flex``: FlexAttention with a ``BlockMask`` from the rule's ``mask_mod`` (the window in it)
  and a soft-capping ``score_mod`` (compiled on CUDA; torch has no FlexAttention backward on the
  CPU, so there it serves forward-only passes); sinks are refused by name.
- ``flash_varlen``: flash-attn's ``flash_attn_varlen_func`` (CUDA): one call over every prompt
  + first completion, one over every second completion against ``[prompt keys | own keys]``
  (bottom-right aligned, so key index = position: ``window_size`` is exact); ``softcap``
  native; sinks refused by name.
- ``sdpa_segments``: one SDPA call per segment (the CPU's choice under ``auto``; measured per
  layer on an AVX2 EPYC as fast as the dense mask on short rows and twice as fast on long ones),
  banded where a window is shorter than the segment; soft-capping or sinks: the same pieces in
  plain attention math.
- ``mask``: the plain twin, the dense (R, 1, T, T) rule of the layer (one per window), one
  SDPA call per layer (plain math with soft-capping or sinks).

Reached through transformers' ``sdpa`` and ``eager`` entries, wrapped (``kernels.enable``): the
plan arrives through the model's keyword arguments (``dpokit_plan``); without one (generation,
padded batches) the loaded implementation runs as it would without dpokit, soft-caps and sinks
included, and the model keeps its implementation's name (families branch on it). A keyword
this module does not implement is an error naming it, never dropped; every call with a plan is
counted (:attr:`SegmentPlan.calls`), so the scorer proves each attention layer used it
(:func:`~.families.check_consumed`).

    >>> plan = SegmentPlan([[(0, 2, 1, 1)]], length=4)
    >>> plan.bool_mask()[0, 0].int().tolist()   # rejected (t=3) sees the prompt, not chosen
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]
    >>> plan.bool_mask(window=2)[0, 0, 3].int().tolist()  # position 2 sees positions 1 and 2
    [0, 1, 0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

IMPLS = ("auto", "flex", "flash_varlen", "sdpa_segments", "mask")
Segment = tuple[int, int, int, int]  # (start in row, prompt length, first completion, second)
# keywords transformers' attention layers pass that change nothing in segment attention
INERT = frozenset({"position_ids", "cache_position", "use_cache", "output_attentions",
                   "past_key_values", "past_key_value", "layer_idx", "head_mask",
                   "position_embeddings", "output_hidden_states", "return_dict",
                   "output_router_logits"})


class UnsupportedAttention(ValueError):
    """A layer asked attention for something a backend cannot compute exactly."""


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


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, T, T) bool -> additive mask in the attention's dtype (0 or the dtype's minimum).

    >>> mask = torch.tensor([[True, False], [True, True]]).view(1, 1, 2, 2)
    >>> additive_mask(mask, torch.float32)[0, 0, 0, 1].item() == torch.finfo(torch.float32).min
    True

    Made once per forward in the dtype attention runs in, every layer shares it: a bool mask
    would be converted (and, under autocast, kept for backward) once per layer, 30 copies of
    T x T on SmolLM2, 0.5 GB at T = 2,800.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, torch.finfo(dtype).min)


def visible(doc_q, doc_k, branch_q, branch_k, pos_q, pos_k, window: int | None = None):
    """The attention rule, elementwise: a query sees a key of its own segment at or before its
    position, never one of the other completion (branches 1 and 2), and, with a window, only
    keys fewer than ``window`` positions back (transformers' ``sliding_window_overlay``)."""
    rule = (doc_q == doc_k) & (pos_q >= pos_k) & ~((branch_q * branch_k) == 2)
    return rule if window is None else rule & (pos_q - pos_k < window)


@dataclass(frozen=True)
class LayerAttention:
    """What one layer's attention call asks for besides the rule: window (None: full), the
    attention-logit soft-cap (None: off), sinks ((H,) one logit per head, or None)."""

    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None

    @property
    def plain_math(self) -> bool:
        """Soft-capping and sinks need the scores themselves (no SDPA kernel takes them)."""
        return self.softcap is not None or self.sinks is not None


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
    for padding), ``branch`` (R, T) (0 prompt, 1 first, 2 second) and ``pos`` (R, T) (the
    token's position in its own sequence) define the rule. ``calls`` counts the attention
    calls that used the plan, ``windows`` their windows (the scorer checks both)."""

    segments: list[list[Segment]]
    length: int
    impl: str = "sdpa_segments"
    device: torch.device | str = "cpu"
    calls: int = 0
    windows: list[int | None] = field(default_factory=list)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def _tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "doc" not in self._cache:
            rows = len(self.segments)
            doc = torch.full((rows, self.length), -1, dtype=torch.long)  # (R, T)
            branch = torch.zeros(rows, self.length, dtype=torch.long)  # (R, T)
            pos = torch.arange(self.length).repeat(rows, 1)  # (R, T); padding: its index
            number = 0
            for r, segments in enumerate(self.segments):
                for start, p, c, n in segments:
                    doc[r, start:start + p + c + n] = number
                    branch[r, start + p:start + p + c] = 1
                    branch[r, start + p + c:start + p + c + n] = 2
                    pos[r, start:start + p + c] = torch.arange(p + c)
                    pos[r, start + p + c:start + p + c + n] = torch.arange(p, p + n)
                    number += 1
            for name, value in (("doc", doc), ("branch", branch), ("pos", pos)):
                self._cache[name] = value.to(self.device)
        return self._cache["doc"], self._cache["branch"], self._cache["pos"]

    def bool_mask(self, window: int | None = None) -> torch.Tensor:
        """(R, 1, T, T) bool, True where a query may attend to a key (padding sees itself):
        the rule evaluated densely (the flex mask_mod evaluates it per block)."""
        if ("mask", window) not in self._cache:
            doc, branch, pos = self._tokens()
            self._cache["mask", window] = visible(
                doc[:, :, None], doc[:, None, :], branch[:, :, None], branch[:, None, :],
                pos[:, :, None], pos[:, None, :], window)[:, None]
        return self._cache["mask", window]  # (R, 1, T, T)

    def additive_mask(self, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`bool_mask` as :func:`additive_mask`, made once per batch and window."""
        if ("additive", window, dtype) not in self._cache:
            self._cache["additive", window, dtype] = additive_mask(self.bool_mask(window), dtype)
        return self._cache["additive", window, dtype]

    def block_mask(self, window: int | None = None):
        """FlexAttention's BlockMask of the rule (built once per batch and window)."""
        if ("block", window) not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            doc, branch, pos = self._tokens()

            def mask_mod(b, h, q, k):
                return visible(doc[b, q], doc[b, k], branch[b, q], branch[b, k], pos[b, q],
                               pos[b, k], window)

            self._cache["block", window] = create_block_mask(
                mask_mod, len(self.segments), None, self.length, self.length,
                device=str(doc.device))
        return self._cache["block", window]

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


def layer_attention(module, sliding_window=None, softcap=None, s_aux=None,
                    **kwargs) -> LayerAttention:
    """What a layer's call asks for; an unknown keyword is refused by name (never dropped)."""
    unknown = sorted(k for k, v in kwargs.items() if k not in INERT and v is not None
                     and not (k == "is_causal" and v is True))
    if unknown:
        raise UnsupportedAttention(
            f"{type(module).__name__} asks attention for {', '.join(unknown)}, which dpokit's "
            f"segment attention does not implement; use batch_layout=padded")
    return LayerAttention(int(sliding_window) if sliding_window else None,
                          float(softcap) if softcap else None, s_aux)
