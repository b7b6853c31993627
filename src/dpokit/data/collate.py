"""Collate tokenized pairs into the one batch type every text policy reads.

Three layouts fill the same :class:`PreferenceBatch`; the log-prob forward reads only its
scoring indices, so it is the same code for all three:

- ``padded`` (the plain twin): rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1`` prompt +
  rejected, right-padded to the longest row.
- ``packed``: the same 2B sequences packed back to back into as few rows as fit, each
  attending only to itself (block-diagonal causal mask), positions restarting per sequence,
  so no compute is spent on padding.
- ``prefix_shared``: one segment per pair, ``[prompt | chosen | rejected]``; the prompt is run
  once; rejected attends to the prompt but not to chosen, and its positions continue from the
  end of the prompt. Segments are packed like ``packed``.

    >>> from dpokit.data.preference import TokenizedPair
    >>> pair = TokenizedPair(0, [5, 6], [7, 2], [8, 9, 2])
    >>> collate_pairs([pair], pad_token_id=0).input_ids.shape      # 2 rows of 2 + 3
    torch.Size([2, 5])
    >>> collate_pairs([pair], 0, layout="prefix_shared").input_ids.tolist()
    [[5, 6, 7, 2, 8, 9, 2]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import torch

from .preference import TokenizedPair

Layout = Literal["padded", "packed", "prefix_shared"]
LAYOUTS = ("padded", "packed", "prefix_shared")


@dataclass
class PreferenceBatch:
    """A batch of B preference pairs for a causal LM, laid out in R rows of length T.

    input_ids: (R, T) long.
    attention_mask: (R, T) long padding mask (``padded``), or (R, 1, T, T) bool, True where a
        query position may attend to a key position (``packed`` / ``prefix_shared``).
    position_ids: (R, T) long, or None (then positions are 0..T-1 per row).
    score_source: (N,) long, flat index ``row * T + t`` of the hidden state that predicts each
        scored (completion) token.
    score_target: (N,) long, the scored token ids.
    score_sequence: (N,) long in [0, 2B): chosen of pair i -> i, rejected of pair i -> B + i.
    score_position: (N,) long, each scored token's index within its completion.
    pair_index: (B,) long, each pair's index in its dataset (keys the reference cache).
    extras: name -> (B,) float tensors from extra dataset columns.
    ref_chosen_logps / ref_rejected_logps: (B,) precomputed reference log-probs, or None.
    num_tokens: tokens actually run through the model (no padding).
    segments: for ``packed`` / ``prefix_shared``, per row the segments as (start, prompt
        length, first completion length, second completion length or 0); None for ``padded``.
        Segment attention (``dpokit.attention``) runs from these instead of the 4-D mask.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    score_source: torch.Tensor
    score_target: torch.Tensor
    score_sequence: torch.Tensor
    score_position: torch.Tensor
    pair_index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    num_tokens: int = 0
    segments: list[list[tuple[int, int, int, int]]] | None = None

    @property
    def num_pairs(self) -> int:
        return self.pair_index.shape[0]

    def to(self, device: torch.device | str) -> PreferenceBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif isinstance(value, dict):
                value = {k: v.to(device) for k, v in value.items()}
            moved[f.name] = value
        return PreferenceBatch(**moved)


@dataclass
class _Segment:
    """Tokens that attend to each other: a prompt and one or two completions after it."""

    tokens: list[int]
    positions: list[int]
    branch: list[int]  # 0 prompt, 1 first completion, 2 second completion
    scores: list[tuple[int, int, int, int]]  # (source offset, target id, sequence, position)
    shape: tuple[int, int, int]  # prompt, first completion, second completion (or 0) lengths


def _segment(prompt: list[int], completions: list[tuple[list[int], int]]) -> _Segment:
    """Lay out ``prompt`` followed by each (completion, sequence id); every completion
    continues the prompt's positions and is scored from the hidden state before each token."""
    tokens, positions, branch = list(prompt), list(range(len(prompt))), [0] * len(prompt)
    scores = []
    for b, (completion, sequence) in enumerate(completions, start=1):
        start = len(tokens)
        for j, token in enumerate(completion):
            source = len(prompt) - 1 if j == 0 else start + j - 1
            scores.append((source, token, sequence, j))
        tokens += completion
        positions += range(len(prompt), len(prompt) + len(completion))
        branch += [b] * len(completion)
    lengths = [len(c) for c, _ in completions] + [0]
    return _Segment(tokens, positions, branch, scores, (len(prompt), lengths[0], lengths[1]))


def _pack(segments: list[_Segment], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of segments per row, each row at most ``capacity`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(segments)), key=lambda i: -len(segments[i].tokens)):
        n = len(segments[i].tokens)
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int, layout: Layout = "padded",
                  max_row_tokens: int | None = None) -> PreferenceBatch:
    """Lay out ``pairs`` as a :class:`PreferenceBatch`.

    ``max_row_tokens`` caps a packed row (default: the longest segment, so no row is longer than
    the longest single sequence or pair and attention stays cheap).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    b = len(pairs)
    if layout == "prefix_shared":
        segments = [_segment(p.prompt_ids, [(p.chosen_ids, i), (p.rejected_ids, b + i)])
                    for i, p in enumerate(pairs)]
    else:
        segments = [_segment(p.prompt_ids, [(p.chosen_ids, i)]) for i, p in enumerate(pairs)]
        segments += [_segment(p.prompt_ids, [(p.rejected_ids, b + i)]) for i, p in enumerate(pairs)]
    if layout == "padded":
        rows = [[i] for i in range(len(segments))]
    else:
        longest = max(len(s.tokens) for s in segments)
        rows = _pack(segments, max(longest, max_row_tokens or 0))
    length = max(sum(len(segments[i].tokens) for i in row) for row in rows)

    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)  # (R, T)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)  # (R, T)
    segment_ids = torch.full((len(rows), length), -1, dtype=torch.long)  # (R, T), -1 = padding
    branch_ids = torch.zeros((len(rows), length), dtype=torch.long)  # (R, T)
    scores = []
    plan: list[list[tuple[int, int, int, int]]] = []
    for r, row in enumerate(rows):
        offset = 0
        plan.append([])
        for i in row:
            s = segments[i]
            plan[-1].append((offset, *s.shape))
            n = len(s.tokens)
            input_ids[r, offset:offset + n] = torch.tensor(s.tokens)
            position_ids[r, offset:offset + n] = torch.tensor(s.positions)
            segment_ids[r, offset:offset + n] = i
            branch_ids[r, offset:offset + n] = torch.tensor(s.branch)
            scores += [(r * length + offset + src, tgt, seq, pos) for src, tgt, seq, pos in s.scores]
            offset += n
    score = torch.tensor(scores, dtype=torch.long)  # (N, 4)
    real = segment_ids >= 0  # (R, T)
    if layout == "padded":
        attention_mask, positions = real.long(), None
    else:
        attention_mask, positions = _segment_mask(segment_ids, branch_ids), position_ids
    extras = {name: torch.tensor([p.extras[name] for p in pairs], dtype=torch.float32)
              for name in pairs[0].extras}
    return PreferenceBatch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
        score_source=score[:, 0], score_target=score[:, 1], score_sequence=score[:, 2],
        score_position=score[:, 3],
        pair_index=torch.tensor([p.index for p in pairs], dtype=torch.long),
        extras=extras, num_tokens=int(real.sum()), segments=None if layout == "padded" else plan,
    )


def _segment_mask(segment_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """(R, T) segment and branch ids -> (R, 1, T, T) bool mask: causal, inside one segment,
    and a completion sees the prompt and itself but not its sibling. Padding sees itself (a
    fully masked row would give NaN)."""
    t = segment_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # (T, T)
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # (R, T, T)
    key_branch, query_branch = branch_ids[:, None, :], branch_ids[:, :, None]
    visible = (key_branch == 0) | (key_branch == query_branch)  # (R, T, T)
    mask = causal & same_segment & visible & (segment_ids[:, None, :] >= 0)
    mask |= torch.eye(t, dtype=torch.bool)  # padding queries attend to themselves
    return mask[:, None]  # (R, 1, T, T)
