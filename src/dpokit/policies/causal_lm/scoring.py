"""The causal LM's scoring: a batch's per-sequence log-probs (of its scored tokens) under a
model, whatever the layout: the body run once (attention from the batch's segment plan), the
N scored hidden states gathered, the LM head run on them in chunks (or its plain twin), summed
per sequence; LD-DPO's and SamPO's token weights and WPO's sampling norm on the way.

    >>> ld_token_weights(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]), 1, 0.5).tolist()
    [1.0, 0.5, 1.0]
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from ...core.types import SequenceScores
from .attention import SegmentPlan, additive_mask, resolve_impl
from .families import (
    LayoutRefused,
    check_consumed,
    family,
    layout_support,
)
from .heads import (
    apply_head_transforms,
    head_transforms,
    own_token_logps,
    pads_exactly,
    resolve_head,
)
from .logprobs import (
    log_sum_sq_from_logits,
    sum_per_sequence,
    token_log_sum_sq_probs,
    token_logps_chunked,
    token_logps_plain,
    token_stats,
)
from .lora import unwrap_peft
from .router import load_balancing_loss, router_of


def ld_token_weights(score_sequence: torch.Tensor, score_position: torch.Tensor,
                     num_pairs: int, alpha: float) -> torch.Tensor:
    """LD-DPO weights of the scored tokens (Liu et al. 2024: log π = public part + α·verbose
    part): the first min(|y_w|, |y_l|) tokens of both completions of a pair weigh 1, the rest α.

    >>> seq = torch.tensor([0, 0, 0, 1])        # B=1: chosen has 3 tokens, rejected 1
    >>> ld_token_weights(seq, torch.tensor([0, 1, 2, 0]), 1, 0.5).tolist()
    [1.0, 0.5, 0.5, 1.0]
    """
    counts = torch.bincount(score_sequence, minlength=2 * num_pairs)  # (2B,)
    shared = torch.minimum(counts[:num_pairs], counts[num_pairs:])  # (B,)
    limit = shared[score_sequence % num_pairs]  # (N,)
    return torch.where(score_position < limit, 1.0, alpha).float()


def _mix(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values below 2^32; no overflow)."""
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return h ^ (h >> 16)


def sampo_token_weights(score_sequence: torch.Tensor, score_position: torch.Tensor,
                        num_pairs: int, example_index: torch.Tensor, seed: int) -> torch.Tensor:
    """SamPO's down-sampling (Lu et al. 2024) as 0/1 weights of the scored tokens: of each
    pair's completions, min(|y_w|, |y_l|) tokens each count (all of the shorter one, a random
    subset of the longer one), so the two log-ratios sum equally many tokens. The subset is a
    hash of (seed, example, side, position): the same in every forward and batch layout, so a
    precomputed reference sums the same tokens (the paper draws anew in each forward).

    >>> seq = torch.tensor([0, 0, 0, 1])        # B=1: chosen has 3 tokens, rejected 1
    >>> w = sampo_token_weights(seq, torch.tensor([0, 1, 2, 0]), 1, torch.tensor([7]), 0)
    >>> w[:3].sum().item(), w[3].item()          # one of the chosen's three, the rejected's one
    (1.0, 1.0)
    """
    counts = torch.bincount(score_sequence, minlength=2 * num_pairs)  # (2B,)
    shared = torch.minimum(counts[:num_pairs], counts[num_pairs:])  # (B,)
    pair, side = score_sequence % num_pairs, score_sequence // num_pairs  # (N,), (N,)
    h = _mix(torch.full_like(score_sequence, seed & 0xFFFFFFFF))
    for part in (example_index.to(score_sequence.device)[pair], side, score_position):
        h = _mix(h ^ (part.long() & 0xFFFFFFFF))  # (N,)
    key = h.double() / 2**32  # (N,) uniform in [0, 1), the token's draw
    order = torch.argsort(score_sequence.double() + key)  # by sequence, randomly within
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)  # (N,)
    start = torch.cumsum(counts, 0) - counts  # (2B,) each sequence's first rank
    return (rank - start[score_sequence] < shared[pair]).float()  # (N,) the kept tokens


def _compute_dtype(device_type: str, weights_dtype: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on, else the weights'."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weights_dtype


class Scoring:
    """The scoring half of :class:`~dpokit.policies.causal_lm.CausalLMPolicy` (its
    ``logprob_impl``, ``chunk_size``, ``ld_alpha``, ``sampo_seed``, ``attention_impl``,
    ``plans_enabled``, ``dense_layouts`` (packed rows carried by the batch's 4-D mask through
    the model's own attention: the vision-language room), ``scorer`` and reference scorer)."""

    _layout_support: dict[str, dict[str, str | None]]
    _heads: dict[int, tuple | None]

    def _scores(self, model: nn.Module, batch, sampling_norm: bool = False,
                token_stats: bool = False) -> SequenceScores:
        scorer = (self.scorer if model is self.model
                  else self._reference_scorer() if model is self.reference_model
                  else Scorer(self, model))
        weights, pairs = None, batch.num_sequences // 2
        if self.ld_alpha is not None:
            weights = ld_token_weights(
                batch.score_sequence, batch.score_position, pairs, self.ld_alpha
            )
        if self.sampo_seed is not None:
            kept = sampo_token_weights(batch.score_sequence, batch.score_position, pairs,
                                       batch.example_index, self.sampo_seed)
            weights = kept if weights is None else weights * kept
        seq, counts, norm, stats, aux = scorer(
            batch.input_ids,
            batch.attention_mask,
            batch.position_ids,
            batch.score_source,
            batch.score_target,
            batch.score_sequence,
            batch.num_sequences,
            weights,
            batch.segments,
            sampling_norm,
            token_stats,
            batch.model_inputs,
        )
        entropy, correct = (None, None) if stats is None else (stats[:, 0], stats[:, 1])
        return SequenceScores(seq, counts, norm, entropy, correct, aux)

    def sequence_logps(
        self,
        model: nn.Module,
        input_ids,
        attention_mask,
        position_ids,
        score_source,
        score_target,
        score_sequence,
        num_sequences: int,
        token_weights=None,
        segments=None,
        sampling_norm: bool = False,
        token_stats: bool = False,
        model_inputs: dict[str, torch.Tensor] | None = None,
    ):
        """Run the body once, score the N completion tokens, sum them per sequence.

        input_ids (R, T); score_* (N,) as in :class:`~dpokit.data.TextBatch`; ``model_inputs``
        go to the body as they are (a vision-language model's pixel values); returns
        ((S,) summed log-probs, (S,) token counts, (S,) summed log sum p^2 or None, (S, 2)
        summed token entropy and argmax-correct counts or None, () the routers' weighted
        load-balancing loss or None: with gradients, on a family with MoE routers).
        """
        base = unwrap_peft(model)
        decoder = self._body(base)
        if self._head_spec(base, decoder) is None:  # a head only its own forward computes
            if segments is not None:
                raise LayoutRefused(
                    f"batch_layout=packed / prefix_shared cannot be exact for {family(base)}: "
                    f"its head does more than its output embeddings and the known logit "
                    f"transforms, so only its own forward scores it; use batch_layout=padded")
            stats = torch.zeros(score_source.shape[0], 2, device=input_ids.device) \
                if token_stats else None
            by_row = not bool(attention_mask.all()) and self._padding_sensitive(base)
            token_logps, log_sum_sq = own_token_logps(
                model, input_ids, attention_mask, score_source, score_target, stats, model_inputs,
                by_row)
            return self._sums(token_logps, log_sum_sq if sampling_norm else None, stats,
                              token_weights, score_sequence, num_sequences, None)
        extra, plan = {}, None
        impl = resolve_impl(self.attention_impl, input_ids.device.type)
        if segments is not None:
            self._check_layout(base, segments, impl)
        router = router_of(base.config, self.router_aux_coef) \
            if model is self.model and torch.is_grad_enabled() else None
        if router is not None:
            extra["output_router_logits"] = True
        if segments is not None and self.plans_enabled:
            plan = SegmentPlan(segments, input_ids.shape[1], impl, input_ids.device)
            attention_mask, extra["dpokit_plan"] = None, plan  # built once, every layer reads
        elif attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
            attention_mask = additive_mask(
                attention_mask, _compute_dtype(input_ids.device.type, next(base.parameters()).dtype)
            )
        body_mask = attention_mask
        outputs = self._body_forward(base, decoder, input_ids, attention_mask, position_ids,
                                     {**extra, **(model_inputs or {})})
        hidden = outputs.last_hidden_state  # (R, T, H)
        aux = None
        if router is not None and getattr(outputs, "router_logits", None):
            real = outputs.real if getattr(outputs, "one_row_at_a_time", False) else \
                body_mask.bool() if body_mask is not None and body_mask.dim() == 2 else \
                torch.ones_like(input_ids, dtype=torch.bool) if plan is None else \
                plan._tokens()[0] >= 0  # (R, T) not padding
            aux = router.coef * load_balancing_loss(outputs.router_logits, router.experts,
                                                    router.top_k, real)  # ()
        if plan is not None:
            check_consumed(base, plan)  # every attention layer used it: proved, not assumed
        h = hidden.reshape(-1, hidden.shape[-1])[score_source]  # (N, H), predicting positions only
        stats = h.new_zeros((h.shape[0], 2), dtype=torch.float32) if token_stats else None
        token_logps = self._head_logps(base, h, score_target, stats)  # (N,) fp32
        log_sum_sq = self._head_log_sum_sq(base, h.detach()) if sampling_norm else None
        return self._sums(token_logps, log_sum_sq, stats, token_weights, score_sequence,
                          num_sequences, aux)

    @staticmethod
    def _sums(token_logps, log_sum_sq, stats, token_weights, score_sequence,
              num_sequences: int, aux):
        """Per-token figures (N,) summed per sequence: sequence_logps' return value."""
        if token_weights is not None:
            token_logps = token_logps * token_weights  # (N,)
        seq = sum_per_sequence(token_logps, score_sequence, num_sequences)  # (S,)
        norm = None if log_sum_sq is None else sum_per_sequence(
            log_sum_sq, score_sequence, num_sequences)  # (S,)
        if stats is not None:
            stats = torch.zeros(num_sequences, 2, device=stats.device).index_add(
                0, score_sequence.to(stats.device), stats)  # (S, 2)
        return seq, torch.bincount(score_sequence, minlength=num_sequences), norm, stats, aux

    def _body_forward(self, base, decoder, input_ids, attention_mask, position_ids, extra):
        """The body over the batch; a padding-sensitive family's padded rows one at a time,
        unpadded (:func:`~.families.padding_sensitive`), their states put back in place."""
        padded = attention_mask is not None and attention_mask.dim() == 2 and \
            not bool(attention_mask.all())
        if not (padded and self._padding_sensitive(base)) or "dpokit_plan" in extra:
            return decoder(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids, use_cache=False, **extra)
        rows = [decoder(input_ids=input_ids[r:r + 1, :int(n)], use_cache=False, **extra)
                for r, n in enumerate(attention_mask.sum(1).tolist())]
        first = rows[0].last_hidden_state
        hidden = first.new_zeros(*input_ids.shape, first.shape[-1])  # (R, T, H)
        for r, row in enumerate(rows):
            hidden[r, :row.last_hidden_state.shape[1]] = row.last_hidden_state[0]
        routers = [getattr(row, "router_logits", None) for row in rows]
        router_logits = None if not all(routers) else tuple(
            torch.cat(layer, 0) for layer in zip(*routers, strict=True))  # per layer (ΣL, N)
        return SimpleNamespace(last_hidden_state=hidden, router_logits=router_logits,
                               one_row_at_a_time=True,
                               real=torch.ones(sum(r.last_hidden_state.shape[1] for r in rows),
                                               dtype=torch.bool, device=input_ids.device))

    def _padding_sensitive(self, base) -> bool:
        """Padded rows would not give each sequence's own states (:func:`~.heads.
        pads_exactly`, once per model)."""
        return not pads_exactly(base, self._body(base))

    @staticmethod
    def _body(base: nn.Module) -> nn.Module:
        """The transformer body (LlamaModel, GPT2Model, ...); found with ``get_decoder()`` where
        the model's prefix names no attribute (Llama 4's text model)."""
        decoder = base.base_model
        if decoder is base:
            decoder = base.get_decoder()
            decoder = base.model if decoder is base else decoder
        return decoder

    def _head_spec(self, base: nn.Module, decoder: nn.Module | None = None):
        """The logit transforms after ``base``'s output embeddings (:func:`~.heads.
        resolve_head`, proved once per model on its own forward), or None (its own forward
        scores it). The vision-language room reads them off the text config."""
        if id(base) not in self._heads:
            text = base.config.get_text_config() if hasattr(base.config, "get_text_config") \
                else base.config
            self._heads[id(base)] = head_transforms(text) if self.dense_layouts else \
                resolve_head(base, decoder if decoder is not None else self._body(base))
        return self._heads[id(base)]

    def _check_layout(self, base: nn.Module, segments, impl: str) -> None:
        """A packed or prefix-shared batch on a family where it cannot be exact is refused by
        name, before the model runs (:func:`~.families.layout_support`, once per backend)."""
        if impl not in self._layout_support:
            self._layout_support[impl] = layout_support(
                base, impl, plans=self.plans_enabled or self.dense_layouts)
        layout = "prefix_shared" if any(n for row in segments for *_, n in row) else "packed"
        reason = self._layout_support[impl][layout]
        if reason is not None:
            raise LayoutRefused(f"batch_layout={layout} cannot be exact for {family(base)}: "
                                f"{reason}; use batch_layout=padded (or auto)")

    def _simple_head(self, base: nn.Module) -> bool:
        """A bias-free linear head with no logit transform (the fast path applies)."""
        head = base.get_output_embeddings()
        return type(head) is nn.Linear and head.bias is None and not self._head_spec(base)

    def _logits(self, base: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Any head (bias, LoRA on lm_head, the family's logit transforms) on (c, H) -> (c, V)
        fp32."""
        return apply_head_transforms(base.get_output_embeddings()(h).float(),
                                     self._head_spec(base))  # (c, V)

    @torch.no_grad()
    def _head_log_sum_sq(self, base: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N,) log sum_v p(v)^2 of each scored position (WPO), no gradients."""
        head = base.get_output_embeddings()
        if self._simple_head(base):
            return token_log_sum_sq_probs(
                h, head.weight, self.chunk_size, _compute_dtype(h.device.type, head.weight.dtype)
            )
        return torch.cat(
            [
                log_sum_sq_from_logits(self._logits(base, h[s : s + self.chunk_size]))
                for s in range(0, h.shape[0], self.chunk_size)
            ]
        )

    def _head_logps(self, base: nn.Module, h: torch.Tensor, targets: torch.Tensor,
                    stats: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) fp32 log-probs of ``targets``; ``stats`` (N, 2), when given, gets each
        position's entropy and argmax == target."""
        head = base.get_output_embeddings()
        compute_dtype = _compute_dtype(h.device.type, head.weight.dtype)
        simple_head = self._simple_head(base)
        if simple_head and self.logprob_impl == "chunked":
            return token_logps_chunked(h, head.weight, targets, self.chunk_size, compute_dtype,
                                       stats)
        if simple_head:
            return token_logps_plain(h, head.weight, targets, compute_dtype, stats)
        # Any other head (bias, LoRA on lm_head, soft-capping): call it, still only on the
        # completion positions, in chunks, and let autograd keep the logits.
        pieces = []
        for start in range(0, h.shape[0], self.chunk_size):
            logits = self._logits(base, h[start : start + self.chunk_size])  # (c, V)
            piece = torch.log_softmax(logits, -1).gather(
                1, targets[start : start + self.chunk_size, None]
            )
            if stats is not None:
                chunk, cut = logits.detach(), targets[start : start + self.chunk_size]
                stats[start : start + self.chunk_size] = token_stats(
                    chunk, torch.logsumexp(chunk, -1), cut)
            pieces.append(piece.squeeze(1))
        return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)


class Scorer(nn.Module):
    """The forward that accelerate wraps (DDP needs the forward to run through its wrapper)."""

    def __init__(self, policy: Scoring, model: nn.Module):
        super().__init__()
        self.model = model
        self._policy = [policy]  # a list, so the policy is not registered as a submodule

    def forward(self, *args):
        return self._policy[0].sequence_logps(self.model, *args)
