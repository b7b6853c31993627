"""Instructional Segment Embeddings (ISE; Wu et al., ICLR 2025, "Instructional Segment
Embedding: Improving LLM Safety with Instruction Hierarchy"): a learned vector per segment,
added to every token's input embedding, so the model reads which part of the prompt (which
privilege level) a token belongs to from the token itself, not only from delimiter text.

Segments are read off the token ids: ``markers[k-1]`` begins segment ``k`` (the marker token
included), which lasts until the next marker or a ``reset`` token (a chat turn's start), where
segment 0 begins; a sequence's first tokens are segment 0 too (position 0 resets), and so is
everything after the last turn start: the template's text and the answer. Generation with a
cache feeds only new tokens, which are the answer's: segment 0 as well.

The table starts at zero, so the model starts unchanged (the reference, the model with its
adapter off or its frozen copy, is exactly the starting model). It lives in the transformer
body as ``segment_embedding``; under LoRA it trains in full and is saved with the adapter
(peft's ``modules_to_save``); a forward pre-hook on the body adds it, wherever the body is
called from (dpokit's scoring, ``generate``).

    >>> import torch
    >>> lookup = torch.full((10,), -1); lookup[1], lookup[2], lookup[9] = 1, 2, 0
    >>> segment_ids(torch.tensor([[7, 1, 5, 5, 2, 5, 9, 5]]), lookup)
    tensor([[0, 1, 1, 1, 2, 2, 0, 0]])
    >>> # prefix-shared: prompt [1 5], chosen [2 5], rejected [5] (positions 2 again)
    >>> segment_ids(torch.tensor([[1, 5, 2, 5, 5]]), lookup, torch.tensor([[0, 1, 2, 3, 2]]))
    tensor([[1, 1, 2, 2, 1]])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .lora import unwrap_peft

MODULE = "segment_embedding"  # the table's name in the body (and in modules_to_save)
SPEC_FILE = "segments.json"  # next to a saved model or adapter: the loader reinstalls it


@dataclass(frozen=True)
class SegmentSpec:
    """markers: the tokens that begin segments 1..K; reset: tokens that begin segment 0."""

    markers: tuple[str, ...]
    reset: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def read(cls, folder: str | Path) -> SegmentSpec | None:
        """The spec saved in ``folder`` (None: the model has no segment embeddings)."""
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(tuple(raw["markers"]), tuple(raw.get("reset", ())))

    def write(self, folder: str | Path) -> None:
        (Path(folder) / SPEC_FILE).write_text(json.dumps(asdict(self), indent=1))


def _fill(code: torch.Tensor) -> torch.Tensor:
    """(B, T) each token's segment: the code of the last change at or before it (0 if none)."""
    positions = torch.arange(code.shape[-1], device=code.device).expand_as(code)
    last = torch.where(code >= 0, positions, -1).cummax(dim=-1).values  # (B, T) last change
    return torch.where(last >= 0, code.gather(-1, last.clamp(min=0)), 0)  # (B, T)


def segment_ids(input_ids: torch.Tensor, lookup: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) segment of every token. ``lookup`` (V,): -1 for an ordinary token, 0 for a reset
    token, k for the marker of segment k. With ``position_ids``, the batch layouts agree with
    one sequence per row: a position id of 0 (a packed row's next sequence) resets, and a
    second completion that continues its prompt's positions (prefix sharing) starts in the
    segment the prompt ended in, not the one the first completion ended in."""
    code = lookup[input_ids]  # (B, T): where the segment changes, and to what
    if position_ids is None:
        return _fill(code)
    code = torch.where((position_ids == 0) & (code < 0), 0, code)  # (B, T)
    expected = position_ids[..., :-1] + 1  # (B, T-1) the position that continues
    branch = torch.zeros_like(code, dtype=torch.bool)  # (B, T)
    branch[..., 1:] = (position_ids[..., 1:] != expected) & (position_ids[..., 1:] != 0)
    if not bool(branch.any()):
        return _fill(code)
    back = torch.zeros_like(code)  # (B, T) at a branch: the first completion's length
    back[..., 1:] = expected - position_ids[..., 1:]
    positions = torch.arange(code.shape[-1], device=code.device).expand_as(code)
    prompt_end = (positions - back - 1).clamp(min=0)  # (B, T) the prompt's last token
    inherited = _fill(code).gather(-1, prompt_end)  # (B, T)
    return _fill(torch.where(branch & (code < 0), inherited, code))  # (B, T)


class SegmentEmbedding(nn.Module):
    """The table (K+1, H), zero at the start, and the token -> segment-change lookup (V,)."""

    def __init__(self, lookup: torch.Tensor, segments: int, hidden: int):
        super().__init__()
        self.table = nn.Embedding(segments, hidden)
        nn.init.zeros_(self.table.weight)
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, input_ids: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.table(segment_ids(input_ids, self.lookup, position_ids))  # (B, T, H)


def _add_segments(body: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of the body: input ids become input embeddings plus the segment
    vectors (a call that passes embeddings already is left alone)."""
    ids = args[0] if args else kwargs.get("input_ids")
    if ids is None:
        return None
    embeds = body.get_input_embeddings()(ids)  # (B, T, H)
    extra = getattr(body, MODULE)(ids, kwargs.get("position_ids"))  # (B, T, H)
    kwargs = {**kwargs, "inputs_embeds": embeds + extra.to(embeds.dtype)}
    if args:
        return (None, *args[1:]), kwargs
    return args, {**kwargs, "input_ids": None}


def token_lookup(tokenizer, spec: SegmentSpec, vocab_size: int) -> torch.Tensor:
    """(V,) the lookup of :func:`segment_ids`; each marker and reset token must be one token of
    the tokenizer."""
    lookup = torch.full((vocab_size,), -1, dtype=torch.long)
    for code, token in [*((0, t) for t in spec.reset),
                        *((k + 1, t) for k, t in enumerate(spec.markers))]:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1 or ids[0] >= vocab_size:
            raise ValueError(f"model.segment_tokens: {token!r} is not one token of the "
                             f"tokenizer (it encodes to {ids}); add it as a special token and "
                             f"resize the model's embeddings first")
        lookup[ids[0]] = code
    return lookup


def install_segments(model: nn.Module, tokenizer, spec: SegmentSpec,
                     full_model: str | Path | None = None) -> SegmentEmbedding:
    """Add a zero table of ``len(spec.markers) + 1`` segments to ``model``'s body and the hook
    that adds it to the input embeddings. Before LoRA wraps the model (then name
    :data:`MODULE` in ``modules_to_save``) or before an adapter that holds it is loaded;
    ``full_model``: the full model folder ``model`` was loaded from, whose saved table is read
    in (``from_pretrained`` does not know it)."""
    body = unwrap_peft(model).base_model  # the transformer body (LlamaModel, ...)
    if hasattr(body, MODULE):
        raise ValueError("this model has segment embeddings already")
    embed = body.get_input_embeddings()
    table = SegmentEmbedding(token_lookup(tokenizer, spec, embed.num_embeddings),
                             len(spec.markers) + 1, embed.embedding_dim).to(embed.weight.device)
    body.add_module(MODULE, table)
    body.register_forward_pre_hook(_add_segments, with_kwargs=True)
    if full_model is not None:
        _load_saved_table(table, full_model)
    return table


def _load_saved_table(table: SegmentEmbedding, folder: str | Path) -> None:
    """The table's weights from a full model folder's safetensors."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith(f"{MODULE}.table.weight")), None)
            if key is not None:
                with torch.no_grad():
                    table.table.weight.copy_(f.get_tensor(key))
                return
    raise ValueError(f"{folder}: {SPEC_FILE} names segment embeddings, but no safetensors file "
                     f"holds {MODULE}.table.weight")
