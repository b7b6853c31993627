"""A run proves its batch layout on its own model: a few real training rows scored in the
chosen layout, against each sequence run alone through the model's own forward (its own
attention, its own head and logit transforms). No peer checks this; a family transformers
adds next month is caught on its first run, in seconds, not after a silently wrong training.

    >>> proof = prove_layout(policy, pairs[:4], "prefix_shared", pad_token_id=0)  # doctest: +SKIP
    >>> proof.exact, proof.error                                             # doctest: +SKIP
    (True, 1.9e-07)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...core.modules import eval_mode
from ...data.text.collate import collate_pairs, collate_sequences
from .heads import own_token_logps
from .logprobs import sum_per_sequence

# per-token tolerance (nats) by the dtype the weights compute in: fp32 sums of a few thousand
# products keep ~1e-6 relative; bf16 / fp16 round every product to 2^-8 / 2^-11 (unit roundoff
# 3.9e-3 / 4.9e-4), so a token's log-prob moves by a few hundredths through a deep model; a
# wrong layout moves it by 0.1-10 (a lost window or a leaked segment)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}


@dataclass(frozen=True)
class LayoutProof:
    """layout: the layout checked; error: the largest per-token gap (nats) of a sequence's
    log-prob against its own forward; tolerance: the precision's bound; sequences: how many."""

    layout: str
    error: float
    tolerance: float
    sequences: int

    @property
    def exact(self) -> bool:
        return self.error <= self.tolerance

    def line(self) -> str:
        """The proof in one line.

        >>> LayoutProof("packed", 2e-7, 1e-4, 8).line()
        'packed proved on 8 sequences: largest gap 2.0e-07 nats/token (tolerance 1e-04)'
        """
        return (f"{self.layout} proved on {self.sequences} sequences: largest gap "
                f"{self.error:.1e} nats/token (tolerance {self.tolerance:.0e})")


def proof_rows(examples: Sequence, count: int = 4, among: int = 256) -> list:
    """The ``count`` longest of the first ``among`` rows (long rows reach past windows)."""
    def length(e) -> int:
        return sum(len(ids) for ids in e.token_lists()) if hasattr(e, "token_lists") else \
            len(e.prompt_ids) + len(e.completion_ids)

    return sorted(list(examples[:among]), key=length, reverse=True)[:count]


@torch.no_grad()
def prove_layout(policy, examples: Sequence, layout: str, pad_token_id: int,
                 max_row_tokens: int | None = None) -> LayoutProof:
    """Score ``examples`` (pairs or SFT sequences) in ``layout`` with the policy's model and
    each sequence alone through the model's own forward; the largest per-token gap."""
    pairs = hasattr(examples[0], "chosen_ids")
    collate = collate_pairs if pairs else collate_sequences
    model = policy.model
    batch = collate(examples, pad_token_id, layout, max_row_tokens).to(
        next(model.parameters()).device)
    with eval_mode(model):
        fast = policy.sequence_logps(
            model, batch.input_ids, batch.attention_mask, batch.position_ids,
            batch.score_source, batch.score_target, batch.score_sequence, batch.num_sequences,
            None, batch.segments)[0]  # (S,)
        padded = collate(examples, pad_token_id, "padded").to(batch.input_ids.device)
        own = sum_per_sequence(own_token_logps(  # each row alone: (N,) -> (S,)
            model, padded.input_ids, padded.attention_mask, padded.score_source,
            padded.score_target, by_row=True)[0].double(), padded.score_sequence,
            padded.num_sequences)
    tokens = torch.bincount(padded.score_sequence, minlength=padded.num_sequences).clamp(min=1)
    error = ((fast.double() - own).abs() / tokens).max().item()
    dtype = next(model.parameters()).dtype
    return LayoutProof(layout, error, TOLERANCE.get(dtype, 5e-2), padded.num_sequences)

