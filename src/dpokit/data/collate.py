"""Collate tokenized pairs into the one batch layout every text policy reads.

Layout (B pairs, padded length T):

    rows 0..B-1   : prompt_i + chosen_i   (right-padded)
    rows B..2B-1  : prompt_i + rejected_i (right-padded)

    >>> batch = collate_pairs([pair_a, pair_b], pad_token_id=0)    # doctest: +SKIP
    >>> batch.input_ids.shape                                      # doctest: +SKIP
    torch.Size([4, 17])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from .preference import TokenizedPair


@dataclass
class PreferenceBatch:
    """A batch of B preference pairs for a causal LM.

    input_ids: (2B, T) long, chosen rows first, then rejected rows, right-padded.
    attention_mask: (2B, T) long, 1 on real tokens.
    completion_mask: (2B, T) bool, True on completion tokens (the only ones scored).
    pair_index: (B,) long, each pair's index in its dataset (keys the reference cache).
    extras: name -> (B,) float tensors from extra dataset columns.
    ref_chosen_logps / ref_rejected_logps: (B,) precomputed reference log-probs, or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    pair_index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return self.pair_index.shape[0]

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())

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


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int,
                  pad_to_multiple_of: int = 1) -> PreferenceBatch:
    """Lay out ``pairs`` as a :class:`PreferenceBatch` (chosen rows, then rejected rows)."""
    sequences = [(p.prompt_ids, p.chosen_ids) for p in pairs]
    sequences += [(p.prompt_ids, p.rejected_ids) for p in pairs]
    length = max(len(a) + len(b) for a, b in sequences)
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    rows = len(sequences)
    input_ids = torch.full((rows, length), pad_token_id, dtype=torch.long)  # (2B, T)
    attention_mask = torch.zeros((rows, length), dtype=torch.long)  # (2B, T)
    completion_mask = torch.zeros((rows, length), dtype=torch.bool)  # (2B, T)
    for r, (prompt, completion) in enumerate(sequences):
        n_prompt, n = len(prompt), len(prompt) + len(completion)
        input_ids[r, :n] = torch.tensor(prompt + completion)
        attention_mask[r, :n] = 1
        completion_mask[r, n_prompt:n] = True
    extras = {}
    for name in pairs[0].extras:
        extras[name] = torch.tensor([p.extras[name] for p in pairs], dtype=torch.float32)
    return PreferenceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        pair_index=torch.tensor([p.index for p in pairs], dtype=torch.long),
        extras=extras,
    )
