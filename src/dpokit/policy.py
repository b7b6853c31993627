"""The policy interface, and its first implementation for Hugging Face causal LMs.

The trainer never touches a model directly. It asks a :class:`Policy` for the per-sequence
log-probs of the chosen and rejected completions of a batch, under the policy (with gradients)
and under the reference (without). Anything that can answer that, a causal LM, a
vision-language model, an image generator, a recommender over item sequences, can be trained.

    >>> policy = CausalLMPolicy(model, tokenizer, reference="adapter")  # doctest: +SKIP
    >>> out = policy.logps(batch)                                      # doctest: +SKIP
    >>> out.chosen.shape                                               # (B,)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from .logprobs import sum_per_sequence, token_logps_chunked, token_logps_plain

ReferenceMode = Literal["copy", "adapter", "none"]


@dataclass
class PairLogps:
    """Per-sequence log-probs of a batch of B pairs.

    chosen / rejected: (B,) log-probs summed over completion tokens (fp32).
    chosen_tokens / rejected_tokens: (B,) completion token counts (for length normalization).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def per_token(self) -> PairLogps:
        """The log-probs in fp32, averaged per completion token (an empty completion counts 1).

        >>> PairLogps(torch.tensor([-6.0]), torch.tensor([-6.0]), torch.tensor([2]),
        ...           torch.tensor([3])).per_token().chosen.item()
        -3.0
        """
        return PairLogps(self.chosen.float() / self.chosen_tokens.clamp(min=1),  # (B,)
                         self.rejected.float() / self.rejected_tokens.clamp(min=1),  # (B,)
                         self.chosen_tokens, self.rejected_tokens)


@runtime_checkable
class Policy(Protocol):
    """What the trainer needs from a model. ``batch`` is whatever the policy's collate made;
    the trainer reads only ``batch.num_pairs``, ``batch.pair_index``, ``batch.extras``,
    ``batch.ref_chosen_logps`` / ``batch.ref_rejected_logps`` and calls ``batch.to(device)``."""

    has_reference: bool

    def logps(self, batch: Any) -> PairLogps:
        """Log-probs under the trainable policy, differentiable."""

    def reference_logps(self, batch: Any) -> PairLogps:
        """Log-probs under the frozen reference, without gradients."""

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def prepare(self, accelerator: Any) -> None:
        """Hand trainable modules to ``accelerator.prepare`` and place the rest on its device;
        the policy's forward must then run through the prepared modules."""

    def train(self, mode: bool = True) -> None: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def save_pretrained(self, directory: str | Path) -> None: ...


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


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, T, T) bool -> additive mask in the attention's dtype (0 or the dtype's minimum).

    Made once per forward in the dtype attention runs in, every layer shares it: a bool mask
    would be converted (and, under autocast, kept for backward) once per layer, 30 copies of
    T x T on SmolLM2, 0.5 GB at T = 2,800.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, torch.finfo(dtype).min)


def _compute_dtype(device_type: str, weights_dtype: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on, else the weights'."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weights_dtype


def _unwrap_peft(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class CausalLMPolicy:
    """A Hugging Face causal LM (optionally peft-wrapped) as a :class:`Policy`.

    reference: ``"adapter"`` (LoRA: the same model with the adapter disabled), ``"copy"`` (a
    frozen deep copy made now), or ``"none"`` (reference-free losses).
    logprob_impl: ``"chunked"`` (LM head on completion positions only, chunked, recomputing
    backward) or ``"plain"`` (its twin: full logits on completion positions).
    ld_alpha: LD-DPO (Liu et al. 2024): tokens past the shorter completion of a pair count with
    weight ``ld_alpha`` in both completions' log-probs (policy and reference); None = 1.
    segment_attention: run packed / prefix-shared batches with per-segment attention
    (``dpokit.attention``) instead of a dense 4-D mask; the mask path is its plain twin.
    """

    def __init__(self, model: nn.Module, tokenizer=None, reference: ReferenceMode = "none",
                 logprob_impl: Literal["chunked", "plain"] = "chunked", chunk_size: int = 256,
                 ld_alpha: float | None = None, segment_attention: bool = False):
        if reference == "adapter" and not _is_peft(model):
            raise ValueError("reference='adapter' needs a peft model (use LoRA) or 'copy'")
        if logprob_impl not in ("chunked", "plain"):
            raise ValueError(f"logprob_impl must be 'chunked' or 'plain', got {logprob_impl!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.reference_mode = reference
        self.logprob_impl = logprob_impl
        self.chunk_size = chunk_size
        self.ld_alpha = ld_alpha
        self.segment_attention = False
        if segment_attention:
            from .attention import enable

            self.segment_attention = enable(_unwrap_peft(model))
        self.scorer: nn.Module = _Scorer(self, model)
        self.reference_model: nn.Module | None = None
        if reference == "copy":
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)

    @property
    def has_reference(self) -> bool:
        return self.reference_mode != "none"

    # --- the interface -------------------------------------------------------------------
    def logps(self, batch) -> PairLogps:
        return self._pair_logps(self.model, batch)

    @torch.no_grad()
    def reference_logps(self, batch) -> PairLogps:
        if self.reference_mode == "none":
            raise RuntimeError("this policy has no reference model (reference='none')")
        if self.reference_mode == "copy":
            return self._pair_logps(self.reference_model, batch)
        with self._eval_mode(self.model), self.model.disable_adapter():
            return self._pair_logps(self.model, batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def sync_reference(self, alpha: float = 1.0) -> None:
        """TR-DPO (Gorbatovski et al. 2024): θ_ref <- α·θ + (1-α)·θ_ref; α = 1 is a hard copy."""
        if self.reference_model is None:
            raise RuntimeError("reference syncing needs reference='copy'")
        policy_params = dict(_unwrap_peft(self.model).named_parameters())
        for name, ref in self.reference_model.named_parameters():
            ref.lerp_(policy_params[name].detach().to(ref.dtype), alpha)

    def prepare(self, accelerator) -> None:
        """Hand the trainable module to accelerate (device, DDP/FSDP wrapping)."""
        self.scorer = accelerator.prepare(self.scorer)
        if self.reference_model is not None:
            self.reference_model.to(accelerator.device)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights (or the LoRA adapter) in the ordinary HF format, with the tokenizer."""
        self.model.save_pretrained(directory, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    def fingerprint(self) -> str:
        """Identifies the reference weights for the reference-log-prob cache."""
        model = self.reference_model if self.reference_model is not None else self.model
        base = _unwrap_peft(model)
        checksum = 0.0
        with torch.no_grad():
            for name, p in base.named_parameters():
                if "lora_" not in name:
                    checksum += float(p.double().sum()) + float(p.double().abs().sum()) * 1e-3
        info = {"name": getattr(base.config, "_name_or_path", ""), "checksum": repr(checksum),
                "class": type(base).__name__}
        return json.dumps(info, sort_keys=True)

    # --- internals -----------------------------------------------------------------------
    @staticmethod
    @contextmanager
    def _eval_mode(module: nn.Module):
        was_training = module.training
        module.eval()
        try:
            yield
        finally:
            module.train(was_training)

    def _pair_logps(self, model: nn.Module, batch) -> PairLogps:
        scorer = self.scorer if model is self.model else _Scorer(self, model)
        b = batch.num_pairs
        weights = None
        if self.ld_alpha is not None:
            weights = ld_token_weights(batch.score_sequence, batch.score_position, b, self.ld_alpha)
        seq, counts = scorer(batch.input_ids, batch.attention_mask, batch.position_ids,
                             batch.score_source, batch.score_target, batch.score_sequence,
                             2 * b, weights, batch.segments)
        return PairLogps(seq[:b], seq[b:], counts[:b], counts[b:])

    def sequence_logps(self, model: nn.Module, input_ids, attention_mask, position_ids,
                       score_source, score_target, score_sequence, num_sequences: int,
                       token_weights=None, segments=None):
        """Run the body once, score the N completion tokens, sum them per sequence.

        input_ids (R, T); score_* (N,) as in :class:`~dpokit.data.PreferenceBatch`;
        returns ((num_sequences,) summed log-probs, (num_sequences,) token counts).
        """
        base = _unwrap_peft(model)
        decoder = base.base_model  # the transformer body (LlamaModel, GPT2Model, ...)
        extra = {}
        if segments is not None and self.segment_attention:
            attention_mask, extra = None, {"dpokit_segments": segments}  # see dpokit.attention
        elif attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
            attention_mask = additive_mask(attention_mask, _compute_dtype(input_ids.device.type,
                                                                    next(base.parameters()).dtype))
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False, **extra).last_hidden_state  # (R, T, H)
        h = hidden.reshape(-1, hidden.shape[-1])[score_source]  # (N, H), predicting positions only
        token_logps = self._head_logps(base, h, score_target)  # (N,) fp32
        if token_weights is not None:
            token_logps = token_logps * token_weights  # (N,)
        seq = sum_per_sequence(token_logps, score_sequence, num_sequences)  # (2B,)
        return seq, torch.bincount(score_sequence, minlength=num_sequences)

    def _head_logps(self, base: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        head = base.get_output_embeddings()
        device_type = h.device.type
        compute_dtype = _compute_dtype(device_type, head.weight.dtype)
        simple_head = (type(head) is nn.Linear and head.bias is None
                       and getattr(base.config, "final_logit_softcapping", None) is None
                       and getattr(base.config, "logit_scale", None) is None)
        if simple_head and self.logprob_impl == "chunked":
            return token_logps_chunked(h, head.weight, targets, self.chunk_size, compute_dtype)
        if simple_head:
            return token_logps_plain(h, head.weight, targets, compute_dtype)
        # Any other head (bias, LoRA on lm_head, soft-capping): call it, still only on the
        # completion positions, in chunks, and let autograd keep the logits.
        pieces = []
        for start in range(0, h.shape[0], self.chunk_size):
            logits = head(h[start:start + self.chunk_size]).float()  # (c, V)
            softcap = getattr(base.config, "final_logit_softcapping", None)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            scale = getattr(base.config, "logit_scale", None)
            if scale:
                logits = logits * scale
            piece = torch.log_softmax(logits, -1).gather(1, targets[start:start + self.chunk_size, None])
            pieces.append(piece.squeeze(1))
        return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)


class _Scorer(nn.Module):
    """The forward that accelerate wraps (DDP needs the forward to run through its wrapper)."""

    def __init__(self, policy: CausalLMPolicy, model: nn.Module):
        super().__init__()
        self.model = model
        self._policy = [policy]  # a list, so the policy is not registered as a submodule

    def forward(self, *args):
        return self._policy[0].sequence_logps(self.model, *args)
