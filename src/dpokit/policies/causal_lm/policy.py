"""Hugging Face causal LMs as a :class:`~dpokit.core.Policy`.

The loop never touches a model directly: it asks the policy for the per-sequence log-probs of
a batch's scored tokens, under the policy (with gradients) and under the reference (without).

    >>> policy = CausalLMPolicy(model, tokenizer, reference="adapter")  # doctest: +SKIP
    >>> scores = policy.logps(batch)                                   # doctest: +SKIP
    >>> scores.pairs().chosen.shape                                    # (B,)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ...core.modules import eval_mode
from ...core.protocols import BasePolicy, PolicyCapabilities, ShardSettings
from ...core.sharding import assign, whole, whole_state_dict
from ...core.types import SequenceScores
from .attention import SegmentPlan, enable, resolve_impl
from .logprobs import (
    log_sum_sq_from_logits,
    sum_per_sequence,
    token_log_sum_sq_probs,
    token_logps_chunked,
    token_logps_plain,
    token_stats,
)

ReferenceMode = Literal["copy", "adapter", "adapter_copy", "external", "none"]
REFERENCE_ADAPTER = "reference"  # the frozen copy of a starting adapter (adapter_copy)


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


class CausalLMPolicy(BasePolicy):
    """A Hugging Face causal LM (optionally peft-wrapped) as a :class:`~dpokit.core.Policy`.

    reference: ``"adapter"`` (LoRA: the same model with the adapter disabled), ``"adapter_copy"``
    (a frozen copy of the adapter the run started from, loaded as the peft adapter
    ``"reference"``), ``"copy"`` (a frozen deep copy made now), ``"external"`` (the given
    ``reference_model``, e.g. another checkpoint) or ``"none"``.
    logprob_impl: ``"chunked"`` (LM head on completion positions only, chunked, recomputing
    backward) or ``"plain"`` (its twin: full logits on completion positions).
    ld_alpha: LD-DPO (Liu et al. 2024): tokens past the shorter completion of a pair count with
    weight ``ld_alpha`` in both completions' log-probs (policy and reference); None = 1.
    attention_impl: how packed / prefix-shared batches attend (``attention.py``): ``auto``
    (per device), ``flex``, ``flash_varlen``, ``sdpa_segments`` or ``mask`` (the dense 4-D
    mask, the plain twin).
    merge_on_save: ``save_pretrained`` writes the base with the adapter merged (a full model).
    activation_offloading: the training forward keeps the tensors saved for backward in CPU
    memory (``torch.autograd.graph.save_on_cpu``, pinned on CUDA); the same numbers.
    """

    def __init__(self, model: nn.Module, tokenizer=None, reference: ReferenceMode = "none",
                 reference_model: nn.Module | None = None,
                 logprob_impl: Literal["chunked", "plain"] = "chunked", chunk_size: int = 256,
                 ld_alpha: float | None = None, attention_impl: str = "auto",
                 merge_on_save: bool = False, activation_offloading: bool = False):
        if reference in ("adapter", "adapter_copy") and not _is_peft(model):
            raise ValueError(f"reference={reference!r} needs a peft model (use LoRA) or 'copy'")
        if reference == "adapter_copy" and REFERENCE_ADAPTER not in model.peft_config:
            raise ValueError("reference='adapter_copy' needs the starting adapter loaded as "
                             f"{REFERENCE_ADAPTER!r} too (see models.load_adapter)")
        if logprob_impl not in ("chunked", "plain"):
            raise ValueError(f"logprob_impl must be 'chunked' or 'plain', got {logprob_impl!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.reference_mode = reference
        self.logprob_impl = logprob_impl
        self.chunk_size = chunk_size
        self.ld_alpha = ld_alpha
        if merge_on_save and not _is_peft(model):
            raise ValueError("merge_on_save merges a LoRA adapter: the model has none")
        self.merge_on_save = merge_on_save
        self.activation_offloading = activation_offloading
        resolve_impl(attention_impl, "cpu")  # a bad name fails here, not at the first forward
        self.attention_impl = attention_impl
        # a model whose attention cannot take a plan (not sdpa / eager) keeps the dense mask
        self.plans_enabled = attention_impl != "mask" and enable(_unwrap_peft(model))
        self.scorer: nn.Module = _Scorer(self, model)
        self.reference_scorer: nn.Module | None = None  # made once, when first needed
        self.sharded = False
        self.reference_model: nn.Module | None = None
        if reference == "copy":
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        if (reference == "external") != (reference_model is not None):
            raise ValueError("reference='external' goes with a reference_model, and only it")
        if reference_model is not None:
            self.reference_model = reference_model.eval().requires_grad_(False)
        self.capabilities = PolicyCapabilities(
            reference=reference, deterministic=True, fingerprint=True,
            generation=tokenizer is not None,
            reference_sync=reference in ("copy", "adapter_copy"),
            sharding=True, token_distribution=True)

    # --- the interface -------------------------------------------------------------------
    def logps(self, batch, *, sampling_norm: bool = False) -> SequenceScores:
        if self.activation_offloading:
            with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
                return self._scores(self.model, batch, sampling_norm, token_stats=True)
        return self._scores(self.model, batch, sampling_norm, token_stats=True)

    @torch.no_grad()
    def reference_logps(self, batch) -> SequenceScores:
        if self.reference_mode == "none":
            raise RuntimeError("this policy has no reference model (reference='none')")
        if self.reference_mode in ("copy", "external"):
            return self._scores(self.reference_model, batch)
        with self._eval_mode(self.model), self._reference_adapter():
            return self._scores(self.model, batch)

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def sync_reference(self, alpha: float = 1.0) -> None:
        """TR-DPO (Gorbatovski et al. 2024): θ_ref <- α·θ + (1-α)·θ_ref; α = 1 is a hard copy
        (iterative DPO: the model of the last round becomes the reference). ``copy``: the
        reference model's weights; ``adapter_copy``: the frozen reference adapter's."""
        if self.reference_mode == "adapter_copy":
            params = dict(self.model.named_parameters())
            for name, ref in params.items():
                marker = f".{REFERENCE_ADAPTER}."
                if marker in name:
                    trained = params[name.replace(marker, ".default.")]
                    ref.lerp_(trained.detach().to(ref.dtype), alpha)
            return
        if self.reference_model is None:
            raise RuntimeError("reference syncing needs reference='copy' or 'adapter_copy'")
        policy_params = dict(_unwrap_peft(self.model).named_parameters())
        for name, ref in self.reference_model.named_parameters():
            ref.lerp_(policy_params[name].detach().to(ref.dtype), alpha)

    def prepare(self, accelerator) -> list[nn.Module]:
        """Hand the trainable module to accelerate (device, DDP wrapping)."""
        self.scorer = accelerator.prepare(self.scorer)
        if self.reference_model is not None:
            self.reference_model.to(accelerator.device)
        return [self.scorer]

    def shard(self, settings: ShardSettings) -> list[nn.Module]:
        """FSDP2: ``fully_shard`` each decoder layer (the model's ``_no_split_modules``), then
        the scorer as the root, whose forward also runs the LM head (chunked, outside the
        head's own forward: so the root keeps its gathered weights until backward). A
        ``copy`` reference is sharded the same way. The policy's forward must run through the
        scorer: generation and hidden-state probes are refused by the application."""
        if settings.engine == "zero":
            self._prepare_zero(settings)
            self.scorer = settings.wrap(self.scorer)  # the DeepSpeed engine around it
            return [self.scorer]
        for scorer in (self.scorer, self._reference_scorer()):
            if scorer is None:
                continue
            fully_shard_model(scorer, _unwrap_peft(scorer.model), settings)
        self.sharded = True
        return [self.scorer]

    def _prepare_zero(self, settings: ShardSettings) -> None:
        """DeepSpeed ZeRO (the loop then wraps the scorer with the optimizer). Stage 3 keeps each
        weight partitioned outside its module's forward, so the LM head weight, which the
        chunked head reads inside the scorer's forward, is registered with the scorer; a
        frozen ``copy`` reference is partitioned by an inference engine of its own (TRL's
        ``prepare_deepspeed``), a stage 1/2 one stays whole on each process."""
        self.sharded = settings.zero_stage == 3
        reference = self._reference_scorer()
        if not self.sharded:
            if reference is not None:
                reference.to(next(self.model.parameters()).device)
            return
        import deepspeed
        from deepspeed.runtime.zero import register_external_parameter

        for scorer in (self.scorer, reference):
            if scorer is not None:
                head = _unwrap_peft(scorer.model).get_output_embeddings()
                for param in head.parameters():
                    register_external_parameter(scorer, param)
        if reference is not None:
            config = {k: v for k, v in settings.zero_config.items()
                      if k not in ("gradient_clipping", "optimizer", "scheduler")}
            self.reference_scorer = deepspeed.initialize(model=reference, config=config)[0]

    def _reference_scorer(self) -> nn.Module | None:
        if self.reference_model is None:
            return None
        if self.reference_scorer is None:
            self.reference_scorer = _Scorer(self, self.reference_model)
        return self.reference_scorer

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole tensors (a sharded model's gathered from every process)."""
        with torch.no_grad():
            return {n: whole(p).detach().clone()
                    for n, p in self.named_trainable_parameters().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self.named_trainable_parameters()
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        for name, value in state.items():
            assign(params[name], value)

    def save_pretrained(self, directory: str | Path | None) -> None:
        """Weights (or the trained LoRA adapter) in the ordinary HF format, with the tokenizer.
        Sharded: every process gathers the whole weights; only a given ``directory`` writes."""
        state = None
        if self.sharded:
            state = whole_state_dict(self.model)
        if directory is None:
            return
        extra = {} if state is None else {"state_dict": state}
        if self.merge_on_save:  # (never sharded: the config refuses merge_adapter with fsdp)
            from .lora import merged_copy

            merged_copy(self.model).save_pretrained(directory, safe_serialization=True)
        elif _is_peft(self.model) and REFERENCE_ADAPTER in self.model.peft_config:
            self.model.save_pretrained(directory, safe_serialization=True,
                                       selected_adapters=["default"], **extra)
        else:
            self.model.save_pretrained(directory, safe_serialization=True, **extra)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    def fingerprint(self) -> str:
        """Identifies the reference weights for the reference-log-prob cache."""
        model = self.reference_model if self.reference_model is not None else self.model
        base = _unwrap_peft(model)
        checksum = 0.0
        with torch.no_grad():
            for name, p in base.named_parameters():
                frozen_adapter = (self.reference_mode == "adapter_copy"
                                  and f".{REFERENCE_ADAPTER}." in name)
                if "lora_" not in name or frozen_adapter:
                    p = whole(p).double()  # ZeRO-3 / FSDP2: gathered (every process calls)
                    checksum += float(p.sum()) + float(p.abs().sum()) * 1e-3
        info = {"name": getattr(base.config, "_name_or_path", ""), "checksum": repr(checksum),
                "class": type(base).__name__, "reference": self.reference_mode}
        return json.dumps(info, sort_keys=True)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 40, chat: bool = True,
                 **options) -> list[str]:
        """Greedy completions of ``prompts`` by the policy's model (the adapter, if any, active);
        ``options`` go to ``model.generate`` (e.g. ``do_sample=True, temperature=0.8``)."""
        tokenizer, model = self.tokenizer, self.model
        if tokenizer is None:
            raise self._lacks("generation")
        with self._eval_mode(model):
            outputs = []
            for prompt in prompts:
                if chat and getattr(tokenizer, "chat_template", None):
                    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                         tokenize=False, add_generation_prompt=True)
                    ids = tokenizer(text, add_special_tokens=False,
                                    return_tensors="pt")["input_ids"]
                else:
                    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
                ids = ids.to(next(model.parameters()).device)
                settings = {"do_sample": False, **options}
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    use_cache=True,
                    **settings,
                )
                outputs.append(
                    tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
                )
        return outputs

    @contextmanager
    def as_reference(self):
        """The module that computes the reference (to sample from it, say): the frozen copy or
        external model, or this model with its adapter off / switched to the frozen copy."""
        if self.reference_mode == "none":
            raise RuntimeError("this policy has no reference model (reference='none')")
        if self.reference_model is not None:
            yield self.reference_model
            return
        with self._eval_mode(self.model), self._reference_adapter():
            yield self.model

    # --- internals -----------------------------------------------------------------------
    _eval_mode = staticmethod(eval_mode)

    @contextmanager
    def _reference_adapter(self):
        """The reference pass of a peft model: adapters off, or the frozen starting adapter."""
        if self.reference_mode == "adapter":
            with self.model.disable_adapter():
                yield
            return
        # adapter_copy: switch to the frozen copy; set_adapter freezes every adapter but the
        # active one's trainable flag, so switching back re-enables only "default"
        self.model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
        try:
            yield
        finally:
            self.model.set_adapter("default")

    def _scores(self, model: nn.Module, batch, sampling_norm: bool = False,
                token_stats: bool = False) -> SequenceScores:
        scorer = (self.scorer if model is self.model
                  else self._reference_scorer() if model is self.reference_model
                  else _Scorer(self, model))
        weights = None
        if self.ld_alpha is not None:
            weights = ld_token_weights(
                batch.score_sequence, batch.score_position, batch.num_sequences // 2, self.ld_alpha
            )
        seq, counts, norm, stats = scorer(
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
        return SequenceScores(seq, counts, norm, entropy, correct)

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
        summed token entropy and argmax-correct counts or None).
        """
        base = _unwrap_peft(model)
        decoder = base.base_model  # the transformer body (LlamaModel, GPT2Model, ...)
        extra = {}
        impl = resolve_impl(self.attention_impl, input_ids.device.type)
        if segments is not None and self.plans_enabled and impl != "mask":
            plan = SegmentPlan(segments, input_ids.shape[1], impl, input_ids.device)
            attention_mask, extra = None, {"dpokit_plan": plan}  # built once, every layer reads
        elif attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
            attention_mask = additive_mask(
                attention_mask, _compute_dtype(input_ids.device.type, next(base.parameters()).dtype)
            )
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            # (R, T, H)
            position_ids=position_ids,
            use_cache=False,
            **extra,
            **(model_inputs or {}),
        ).last_hidden_state
        h = hidden.reshape(-1, hidden.shape[-1])[score_source]  # (N, H), predicting positions only
        stats = h.new_zeros((h.shape[0], 2), dtype=torch.float32) if token_stats else None
        token_logps = self._head_logps(base, h, score_target, stats)  # (N,) fp32
        if token_weights is not None:
            token_logps = token_logps * token_weights  # (N,)
        seq = sum_per_sequence(token_logps, score_sequence, num_sequences)  # (S,)
        norm = None
        if sampling_norm:
            norm = sum_per_sequence(
                self._head_log_sum_sq(base, h.detach()), score_sequence, num_sequences
            )  # (S,)
        if stats is not None:
            stats = torch.zeros(num_sequences, 2, device=h.device).index_add(
                0, score_sequence, stats)  # (S, 2)
        return seq, torch.bincount(score_sequence, minlength=num_sequences), norm, stats

    @staticmethod
    def _simple_head(base: nn.Module) -> bool:
        """A bias-free linear head with no soft-capping or scaling (the fast path applies)."""
        head = base.get_output_embeddings()
        return (
            type(head) is nn.Linear
            and head.bias is None
            and getattr(base.config, "final_logit_softcapping", None) is None
            and getattr(base.config, "logit_scale", None) is None
        )

    def _logits(self, base: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Any head (bias, LoRA on lm_head, soft-capping, scaling) on (c, H) -> (c, V) fp32."""
        logits = base.get_output_embeddings()(h).float()  # (c, V)
        softcap = getattr(base.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        scale = getattr(base.config, "logit_scale", None)
        if scale:
            logits = logits * scale
        return logits

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


def fully_shard_model(root: nn.Module, model: nn.Module, settings: ShardSettings) -> None:
    """``fully_shard`` every decoder layer of ``model`` (its ``_no_split_modules`` classes),
    then ``root``, which keeps its gathered weights from forward to backward."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kinds = set(model._no_split_modules or ())
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class "
                         f"(_no_split_modules): cannot shard it layer by layer")
    options: dict = {"mesh": settings.mesh}
    if settings.bf16:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                    reduce_dtype=torch.float32)
    if settings.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for layer in layers:
        fully_shard(layer, reshard_after_forward=settings.reshard_after_forward, **options)
    fully_shard(root, reshard_after_forward=False, **options)


class _Scorer(nn.Module):
    """The forward that accelerate wraps (DDP needs the forward to run through its wrapper)."""

    def __init__(self, policy: CausalLMPolicy, model: nn.Module):
        super().__init__()
        self.model = model
        self._policy = [policy]  # a list, so the policy is not registered as a submodule

    def forward(self, *args):
        return self._policy[0].sequence_logps(self.model, *args)
