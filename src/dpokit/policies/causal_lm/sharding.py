"""The causal LM under a sharding engine: FSDP2 (``fully_shard`` per decoder layer, then the
scorer as the root) or DeepSpeed ZeRO (the LM head registered with the scorer at stage 3, a
``copy`` reference partitioned by an inference engine of its own)."""

from __future__ import annotations

import torch
from torch import nn

from ...core.protocols import ShardSettings
from .lora import unwrap_peft


class Sharding:
    """The sharding half of :class:`~dpokit.policies.causal_lm.CausalLMPolicy`."""

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
            fully_shard_model(scorer, unwrap_peft(scorer.model), settings)
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
        from ...core.packages import need

        need("deepspeed", "deepspeed", "distributed.strategy=deepspeed")
        import deepspeed
        from deepspeed.runtime.zero import register_external_parameter

        for scorer in (self.scorer, reference):
            if scorer is not None:
                head = unwrap_peft(scorer.model).get_output_embeddings()
                for param in head.parameters():
                    register_external_parameter(scorer, param)
        if reference is not None:
            config = {k: v for k, v in settings.zero_config.items()
                      if k not in ("gradient_clipping", "optimizer", "scheduler")}
            self.reference_scorer = deepspeed.initialize(model=reference, config=config)[0]


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
    if settings.bf16:  # weights gathered in bf16, gradients reduced in and kept at fp32;
        # the loop's autocast casts what each op reads. FSDP2's own cast of the forward's inputs
        # would rebuild every dataclass among them (dataclasses.replace in torch.distributed.
        # utils._apply_to_tensors): the layers would count their calls on a copy of the
        # attention plan, and the batch's float fields would reach the scorer in bf16
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                    reduce_dtype=torch.float32,
                                                    cast_forward_inputs=False)
    if settings.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for layer in layers:
        fully_shard(layer, reshard_after_forward=settings.reshard_after_forward, **options)
    fully_shard(root, reshard_after_forward=False, **options)
    settle_gradient_dtypes(root)


def settle_gradient_dtypes(root: nn.Module) -> None:
    """Run FSDP2's lazy initialization now, while the weights that train require grad.

    FSDP2 fixes each group's gradient dtypes at the root's first forward, from the parameters
    that require grad then: the dtype gradients are reduced in (``reduce_dtype``, fp32) and
    cast back to (the parameters' own, fp32). A LoRA policy's first forward is its reference
    pass, under peft's ``disable_adapter``, which sets ``requires_grad=False`` on every
    adapter weight: each layer's group would find nothing trainable and keep no dtypes, so
    under bf16 its gradients would be reduced in bf16 and refused by the fp32 parameters
    (torch 2.13: "attempting to assign a gradient with dtype BFloat16 to a tensor with
    grad_dtype Float"). Initialized here, the groups keep fp32 whatever the first forward is.
    """
    root._get_fsdp_state()._lazy_init()  # (what the root's first forward would run; no-op after)
