"""Hugging Face causal LMs as a :class:`~dpokit.core.Policy`.

The loop never touches a model directly: it asks the policy for the per-sequence log-probs of
a batch's scored tokens, under the policy (with gradients) and under the reference (without).

    >>> policy = CausalLMPolicy(model, tokenizer, reference="adapter")  # doctest: +SKIP
    >>> scores = policy.logps(batch)                                   # doctest: +SKIP
    >>> scores.pairs().chosen.shape                                    # (B,)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from ...core.modules import eval_mode
from ...core.protocols import BasePolicy, PolicyCapabilities
from ...core.types import SequenceScores
from .attention import resolve_impl
from .kernels import enable
from .lora import REFERENCE_ADAPTER, is_peft, unwrap_peft
from .persistence import Persistence
from .scoring import Scorer, Scoring
from .segments import SegmentSpec
from .sharding import Sharding

ReferenceMode = Literal["copy", "adapter", "adapter_copy", "external", "none"]


class CausalLMPolicy(Scoring, Sharding, Persistence, BasePolicy):
    """A Hugging Face causal LM (optionally peft-wrapped) as a :class:`~dpokit.core.Policy`.

    reference: ``"adapter"`` (LoRA: the same model with the adapter disabled), ``"adapter_copy"``
    (a frozen copy of the adapter the run started from, loaded as the peft adapter
    ``"reference"``), ``"copy"`` (a frozen deep copy made now), ``"external"`` (the given
    ``reference_model``, e.g. another checkpoint) or ``"none"``.
    logprob_impl: ``"chunked"`` (LM head on completion positions only, chunked, recomputing
    backward) or ``"plain"`` (its twin: full logits on completion positions).
    ld_alpha: LD-DPO (Liu et al. 2024): tokens past the shorter completion of a pair count with
    weight ``ld_alpha`` in both completions' log-probs (policy and reference); None = 1.
    sampo_seed: SamPO (Lu et al. 2024): each pair's log-probs (policy and reference) sum
    min(|y_w|, |y_l|) tokens of each completion, the longer one's drawn from this seed; None = off.
    attention_impl: how packed / prefix-shared batches attend (``attention.py``): ``auto``
    (per device), ``flex``, ``flash_varlen``, ``sdpa_segments`` or ``mask`` (the dense 4-D
    mask, the plain twin).
    merge_on_save: ``save_pretrained`` writes the base with the adapter merged (a full model).
    activation_offloading: the training forward keeps the tensors saved for backward in CPU
    memory (``torch.autograd.graph.save_on_cpu``, pinned on CUDA); the same numbers.
    segments: the model carries Instructional Segment Embeddings (``segments.py``, installed
    before): saved next to the model, so the loader installs them again.
    segment_plans: packed / prefix-shared rows attend through a segment plan (False: through
    the batch's dense 4-D mask and the model's own attention, as the vision-language room).
    A layout that cannot be exact for the family is refused by name (``families.py``).
    router_aux_coef: a mixture-of-experts family's router load-balancing loss weight in the
    training loss (``router.py``); None: the model's own ``router_aux_loss_coef``; 0: off.
    """

    def __init__(self, model: nn.Module, tokenizer=None, reference: ReferenceMode = "none",
                 reference_model: nn.Module | None = None,
                 logprob_impl: Literal["chunked", "plain"] = "chunked", chunk_size: int = 256,
                 ld_alpha: float | None = None, attention_impl: str = "auto",
                 merge_on_save: bool = False, activation_offloading: bool = False,
                 sampo_seed: int | None = None, segments: SegmentSpec | None = None,
                 segment_plans: bool = True, router_aux_coef: float | None = None):
        if reference in ("adapter", "adapter_copy") and not is_peft(model):
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
        self.sampo_seed = sampo_seed
        if merge_on_save and not is_peft(model):
            raise ValueError("merge_on_save merges a LoRA adapter: the model has none")
        self.merge_on_save = merge_on_save
        self.activation_offloading = activation_offloading
        self.segments = segments
        resolve_impl(attention_impl, "cpu")  # a bad name fails here, not at the first forward
        self.attention_impl = attention_impl
        # packed rows attend through the segment plan where the family takes one; a family
        # that cannot is refused those layouts (families.layout_support); segment_plans=False:
        # the batch's dense 4-D mask through the model's own attention (vision-language)
        self.plans_enabled = segment_plans and enable(unwrap_peft(model))
        self.dense_layouts = not segment_plans
        self.router_aux_coef = router_aux_coef
        self._layout_support, self._heads = {}, {}
        self._head_spec(unwrap_peft(model))  # the head proved now, on the model as it came
        self.scorer: nn.Module = Scorer(self, model)
        self.reference_scorer: nn.Module | None = None  # made once, when first needed
        self.sharded = False
        self.reference_model: nn.Module | None = None
        if reference == "copy":
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        if (reference == "external") != (reference_model is not None):
            raise ValueError("reference='external' goes with a reference_model, and only it")
        if reference_model is not None:
            self.reference_model = reference_model.eval().requires_grad_(False)
        if self.reference_model is not None:
            self._head_spec(unwrap_peft(self.reference_model))
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
        policy_params = dict(unwrap_peft(self.model).named_parameters())
        for name, ref in self.reference_model.named_parameters():
            ref.lerp_(policy_params[name].detach().to(ref.dtype), alpha)

    def prepare(self, accelerator) -> list[nn.Module]:
        """Hand the trainable module to accelerate (device, DDP wrapping)."""
        self.scorer = accelerator.prepare(self.scorer)
        if self.reference_model is not None:
            self.reference_model.to(accelerator.device)
        return [self.scorer]


    def _reference_scorer(self) -> nn.Module | None:
        if self.reference_model is None:
            return None
        if self.reference_scorer is None:
            self.reference_scorer = Scorer(self, self.reference_model)
        return self.reference_scorer

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)


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


