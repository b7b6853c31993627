"""Collate tokenized pairs and SFT sequences into the one batch type text policies read.

Three layouts fill the same :class:`TextBatch`; the log-prob forward reads only its
scoring indices, so it is the same code for all three:

- ``padded`` (the plain twin): rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1`` prompt +
  rejected, right-padded to the longest row.
- ``packed``: the same 2B sequences packed back to back into as few rows as fit, each
  attending only to itself (block-diagonal causal mask), positions restarting per sequence,
  so no compute is spent on padding.
- ``prefix_shared``: one segment per pair, ``[prompt | chosen | rejected]``; the prompt is run
  once; rejected attends to the prompt but not to chosen, and its positions continue from the
  end of the prompt. Segments are packed like ``packed``.

    >>> from dpokit.data.text.pairs import TokenizedPair
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

from .pairs import TokenizedPair

Layout = Literal["padded", "packed", "prefix_shared"]
LAYOUTS = ("padded", "packed", "prefix_shared")


@dataclass
class TextBatch:
    """A batch of E examples (pairs, or SFT sequences) as S scored sequences for a causal LM,
    laid out in R rows of length T. Pairs: S = 2E, the E chosen then the E rejected.

    input_ids: (R, T) long.
    attention_mask: (R, T) long padding mask (``padded``), or (R, 1, T, T) bool, True where a
        query position may attend to a key position (``packed`` / ``prefix_shared``).
    position_ids: (R, T) long, or None (then positions are 0..T-1 per row); (3, R, T) for an
        image-text family with 3-D positions (``policies.vision_language.collate``).
    score_source: (N,) long, flat index ``row * T + t`` of the hidden state that predicts each
        scored (completion) token.
    score_target: (N,) long, the scored token ids.
    score_sequence: (N,) long in [0, S): for pairs, chosen of pair i -> i, rejected -> E + i.
    score_position: (N,) long, each scored token's index within its completion (LD-DPO).
    example_index: (E,) long, each example's index in its dataset (keys the reference table).
    num_sequences: S.
    extras: name -> (E,) float tensors from extra dataset columns.
    ref_logps: (S,) precomputed reference log-probs, or None.
    num_tokens: tokens actually run through the model (no padding).
    segments: for ``packed`` / ``prefix_shared``, per row the segments as (start, prompt
        length, first completion length, second completion length or 0); None for ``padded``.
        Segment attention (``policies.causal_lm.attention``) runs from these, not the mask.
    segment_order: the segments in row-major order, each by its index (pairs: ``prefix_shared``
        segment i is pair i; otherwise segment i < E is chosen of pair i, E + i its rejected).
        A prompt's non-text inputs (images) follow this order.
    model_inputs: name -> tensor, further keyword inputs of the model's forward (a
        vision-language model's ``pixel_values``, in ``segment_order``); empty for text.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    score_source: torch.Tensor
    score_target: torch.Tensor
    score_sequence: torch.Tensor
    score_position: torch.Tensor
    example_index: torch.Tensor
    num_sequences: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    ref_logps: torch.Tensor | None = None
    num_tokens: int = 0
    segments: list[list[tuple[int, int, int, int]]] | None = None
    segment_order: list[int] = field(default_factory=list)
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_pairs(self) -> int:
        """Examples in the batch (pairs, for preference batches)."""
        return self.example_index.shape[0]

    def to(self, device: torch.device | str) -> TextBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif isinstance(value, dict):
                value = {k: v.to(device) for k, v in value.items()}
            moved[f.name] = value
        return TextBatch(**moved)


PreferenceBatch = TextBatch  # the name of preference batches in earlier releases


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
                  max_row_tokens: int | None = None) -> TextBatch:
    """Lay out ``pairs`` as a :class:`TextBatch` of 2B sequences.

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
    extras = {name: torch.tensor([p.extras[name] for p in pairs], dtype=torch.float32)
              for name in pairs[0].extras}
    return _collate(segments, layout, pad_token_id, max_row_tokens,
                    [p.index for p in pairs], 2 * b, extras)


def collate_sequences(sequences: Sequence, pad_token_id: int, layout: Layout = "packed",
                      max_row_tokens: int | None = None) -> TextBatch:
    """Lay out SFT sequences (``prompt_ids`` context, ``completion_ids`` scored) as a
    :class:`TextBatch` of S = B sequences; ``prefix_shared`` means ``packed`` here.

    >>> from dpokit.data.text.sft import TokenizedSequence
    >>> batch = collate_sequences([TokenizedSequence(0, [5], [6, 7]),
    ...                            TokenizedSequence(1, [5, 6], [8])], pad_token_id=0)
    >>> batch.input_ids.tolist(), batch.score_target.tolist()
    ([[5, 6, 7], [5, 6, 8]], [6, 7, 8])
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    layout = "packed" if layout == "prefix_shared" else layout
    segments = [_segment(s.prompt_ids, [(s.completion_ids, i)]) for i, s in enumerate(sequences)]
    return _collate(segments, layout, pad_token_id, max_row_tokens,
                    [s.index for s in sequences], len(sequences), {})


def _collate(segments: list[_Segment], layout: Layout, pad_token_id: int,
             max_row_tokens: int | None, example_index: list[int], num_sequences: int,
             extras: dict[str, torch.Tensor]) -> TextBatch:
    """Place ``segments`` in rows (one each for ``padded``, packed first-fit otherwise)."""
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
            start = r * length + offset
            scores += [(start + src, tgt, seq, pos) for src, tgt, seq, pos in s.scores]
            offset += n
    score = torch.tensor(scores, dtype=torch.long).view(-1, 4)  # (N, 4)
    real = segment_ids >= 0  # (R, T)
    if layout == "padded":
        attention_mask, positions = real.long(), None
    else:
        attention_mask, positions = _segment_mask(segment_ids, branch_ids), position_ids
    return TextBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        score_source=score[:, 0],
        score_target=score[:, 1],
        score_sequence=score[:, 2],
        score_position=score[:, 3],
        example_index=torch.tensor(example_index, dtype=torch.long),
        num_sequences=num_sequences,
        extras=extras,
        num_tokens=int(real.sum()),
        segments=None if layout == "padded" else plan,
        segment_order=[i for row in rows for i in row],
    )


@dataclass(frozen=True)
class PairCollator:
    """Collates preference pairs; ``key`` names the layout for the reference cache.

    >>> PairCollator(0, "packed").key
    'pairs:packed:0:None'
    """

    pad_token_id: int
    layout: Layout = "prefix_shared"
    max_row_tokens: int | None = None

    def __call__(self, pairs: Sequence[TokenizedPair]) -> TextBatch:
        return collate_pairs(pairs, self.pad_token_id, self.layout, self.max_row_tokens)

    @property
    def key(self) -> str:
        return f"pairs:{self.layout}:{self.pad_token_id}:{self.max_row_tokens}"


@dataclass(frozen=True)
class SequenceCollator:
    """Collates SFT sequences (packed, padding-free, by default)."""

    pad_token_id: int
    layout: Layout = "packed"
    max_row_tokens: int | None = None

    def __call__(self, sequences: Sequence) -> TextBatch:
        return collate_sequences(sequences, self.pad_token_id, self.layout, self.max_row_tokens)

    @property
    def key(self) -> str:
        return f"sequences:{self.layout}:{self.pad_token_id}:{self.max_row_tokens}"


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
