"""The protocols the generic loop talks to: a batch, a policy, an objective, a data source.

Everything a modality brings (a causal LM, a diffusion model, a recommender) lives behind
these; the loop never probes an object with getattr. A policy *declares* what it can do in
:class:`PolicyCapabilities`; the loop refuses what a policy cannot do with a clear message.

    >>> PolicyCapabilities(reference="copy").has_reference
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from .types import MetricSums, SequenceScores

ReferenceKind = Literal["none", "copy", "adapter", "adapter_copy", "external"]


@runtime_checkable
class Batch(Protocol):
    """What the loop reads of a batch; every other field is the policy's business.

    example_index: (E,) long, each example's position in its dataset (keys the reference
        table; examples are pairs, sequences, rows).
    num_tokens: tokens run through the model (throughput); 0 where it means nothing.
    ref_logps: (S,) reference scores filled from a precomputed table, or None.
    """

    example_index: torch.Tensor
    num_tokens: int
    ref_logps: torch.Tensor | None

    def to(self, device: torch.device | str) -> Batch: ...


@dataclass(frozen=True)
class PolicyCapabilities:
    """What a policy can do, declared once by the policy.

    reference: how the frozen reference is obtained: ``none`` (reference-free losses only),
        ``copy`` (a frozen copy), ``adapter`` (the base with the adapter disabled),
        ``adapter_copy`` (a frozen copy of a starting adapter), ``external``.
    deterministic: the same batch always gets the same scores. A policy that samples noise or
        timesteps per call (diffusion) sets False, and precomputing its reference is refused.
    fingerprint: ``fingerprint()`` identifies the reference weights, so reference scores may
        be cached on disk.
    generation: ``generate(prompts)`` works (online data, sample tables).
    reference_sync: ``sync_reference(alpha)`` works (TR-DPO).
    sharding: the policy can be wrapped by a sharding engine (FSDP2 / ZeRO).
    token_distribution: ``logps(batch, sampling_norm=True)`` fills ``sampling_norm`` (WPO).
    """

    reference: ReferenceKind = "none"
    deterministic: bool = True
    fingerprint: bool = False
    generation: bool = False
    reference_sync: bool = False
    sharding: bool = False
    token_distribution: bool = False

    @property
    def has_reference(self) -> bool:
        return self.reference != "none"


@dataclass(frozen=True)
class PolicyDescription:
    """What a trained policy is, said by the policy: its model card and the ``dpokit.json``
    next to a saved model are written from it, and :func:`dpokit.runs.load_policy` reads the
    modality back.

    modality: the room it lives in (``causal_lm``, ``vision_language``, ``recommender``,
        ``diffusion``, ...).
    model: the model it was trained from (a hub name or folder), or what it is when built
        in-process (``NextItemModel: session transformer, 200 items``).
    kind: ``adapter`` (a LoRA adapter on a frozen base), ``merged`` (the base with an adapter
        merged in) or ``full``.
    library: what loads the saved folder (``peft``, ``transformers``, ``diffusers``, ``torch``).
    """

    modality: str
    model: str
    kind: str = "full"
    library: str = "torch"


@dataclass(frozen=True)
class ShardSettings:
    """How a policy shards itself: ``engine="fsdp2"`` (``torch.distributed.fsdp.fully_shard``)
    or ``"zero"`` (DeepSpeed ZeRO; the loop then hands the returned root module and the
    optimizer to ``deepspeed.initialize``).

    mesh: the 1-D DeviceMesh of all processes (fsdp2). bf16: parameters computed in bf16,
    gradients reduced in fp32 (``MixedPrecisionPolicy``). cpu_offload: parameters, gradients
    and optimizer state live on the CPU (``CPUOffloadPolicy``). reshard_after_forward: free the
    gathered layer weights after each forward (less memory, one more all-gather in backward).
    zero_config: the DeepSpeed config (zero): a stage-3 policy registers the weights it uses
    outside their module's forward, and wraps a frozen reference copy for inference with it.
    wrap (zero): the loop's DeepSpeed engine around the policy's root module (built with the
    optimizer); the policy runs its forwards through what ``wrap`` returns, as DeepSpeed
    counts micro-batches in its engine's forward.
    """

    mesh: Any = None
    bf16: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    engine: str = "fsdp2"
    zero_config: dict | None = None
    wrap: Callable[[nn.Module], nn.Module] | None = None

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage (0 under FSDP2)."""
        return int((self.zero_config or {}).get("zero_optimization", {}).get("stage", 0))


@runtime_checkable
class Policy(Protocol):
    """What the loop needs from a model. ``batch`` is whatever the policy's collate made."""

    capabilities: PolicyCapabilities

    def logps(self, batch: Any, *, sampling_norm: bool = False) -> SequenceScores:
        """Scores of the batch's sequences under the trainable policy, differentiable."""

    def reference_logps(self, batch: Any) -> SequenceScores:
        """Scores under the frozen reference, without gradients."""

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The trained parameters by stable name (checkpoints key optimizer state by them,
        so a checkpoint does not depend on the process count or the engine)."""

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def prepare(self, accelerator: Any) -> list[nn.Module]:
        """Hand trainable modules to ``accelerator.prepare`` (the forward must then run through
        them) and return them, so the loop can skip gradient sync between micro-batches."""

    def shard(self, settings: ShardSettings) -> list[nn.Module]:
        """Shard the modules (FSDP2, or the ZeRO preparation) instead of ``prepare``
        (``capabilities.sharding``); return the root modules whose gradient sync the loop
        pauses between micro-batches (ZeRO: the one root the engine wraps)."""

    def train(self, mode: bool = True) -> None: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole (gathered, when sharded) tensors; called on every process."""

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """From whole tensors (each process keeps its shard, when sharded)."""

    def save_pretrained(self, directory: str | Path | None) -> None:
        """Called on every process; ``directory`` is None on all but the main one (a sharded
        policy gathers its weights collectively, then the main process writes)."""

    def describe(self) -> PolicyDescription:
        """What it is: modality, the model it was trained from, adapter or full (the model
        card and ``dpokit.json`` of a saved model)."""

    def fingerprint(self) -> str:
        """Identifies the reference weights (``capabilities.fingerprint``)."""

    def sync_reference(self, alpha: float) -> None:
        """θ_ref <- α·θ + (1-α)·θ_ref (``capabilities.reference_sync``)."""

    def generate(self, prompts: list[Any], **options: Any) -> list[Any]:
        """Samples for ``prompts`` (``capabilities.generation``)."""


class BasePolicy:
    """Defaults for the optional parts of :class:`Policy`: each raises, naming the capability
    a subclass must declare (and implement) to use it."""

    capabilities = PolicyCapabilities()

    def _lacks(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} does not declare the capability "
                                   f"{what!r}")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.named_trainable_parameters().values())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the trained tensors by name (a sharded policy overrides: it gathers)."""
        return {n: p.detach().clone() for n, p in self.named_trainable_parameters().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Write ``state`` into the trained tensors; a missing or extra name is an error."""
        params = self.named_trainable_parameters()
        if set(state) != set(params):
            raise ValueError(f"checkpoint does not match the model: missing "
                             f"{sorted(set(params) - set(state))[:5]}, unexpected "
                             f"{sorted(set(state) - set(params))[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def describe(self) -> PolicyDescription:
        """What this policy is (a subclass says; this default names only its class)."""
        return PolicyDescription(modality="custom", model=type(self).__name__)

    def shard(self, settings: ShardSettings) -> list[nn.Module]:
        raise self._lacks("sharding")

    def fingerprint(self) -> str:
        raise self._lacks("fingerprint")

    def sync_reference(self, alpha: float) -> None:
        raise self._lacks("reference_sync")

    def generate(self, prompts: list[Any], **options: Any) -> list[Any]:
        raise self._lacks("generation")


@dataclass
class ObjectiveOutput:
    """What an objective returns for one micro-batch.

    losses: (E,) per-example losses, differentiable; the loop backpropagates their sum
        divided by the step's global count of ``Objective.units`` (pairs, tokens).
    metrics: detached (sum, count) metrics of the micro-batch (the loop adds ``loss``).
    """

    losses: torch.Tensor
    metrics: MetricSums = field(default_factory=MetricSums)


@runtime_checkable
class Objective(Protocol):
    """Scores a batch with a policy and returns per-example losses and metrics.

    needs_reference: reference scores must be supplied (``ref_logps``, (S,)).
    batch_level: per-example losses depend on the other examples of the micro-batch (sorting,
        batch statistics), so accumulation and process splits are not exactly one big batch.
    pools_batch_stats: its batch statistics are pooled over processes through ``reduce_sum``,
        so process splits (not accumulation) do give one big batch.
    reduce_sum: set by the loop when several processes train: sums a tensor over them (for
        batch statistics an objective pools).
    """

    name: str
    needs_reference: bool
    batch_level: bool
    pools_batch_stats: bool
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None

    def units(self, batch: Any) -> int:
        """How many units the batch's losses are normalized over (pairs, tokens)."""

    def __call__(self, policy: Policy, batch: Any,
                 ref_logps: torch.Tensor | None) -> ObjectiveOutput: ...

    def train(self, mode: bool = True) -> None:
        """Training (state such as a loss's running statistics updated) or evaluation."""

    def state_dict(self) -> dict[str, Any]:
        """State carried across steps (checkpoints save it; empty for most objectives)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StatelessObjective:
    """The state half of :class:`Objective` for an objective that keeps none."""

    def train(self, mode: bool = True) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state; the checkpoint has "
                             f"{sorted(state)}")


@runtime_checkable
class DataSource(Protocol):
    """Where a step's micro-batches come from.

    A static source is a pure function of the step (a seeded order over a fixed dataset); an
    online source makes batches from the current policy and carries its own resumable state.
    steps_per_epoch: None when the source has no epochs (then ``max_steps`` must be set).
    precomputable: the batches do not depend on the policy, so reference scores can be
        computed once before training (``reference_plan``).
    fingerprint: identifies the data (checked on resume, keys the reference cache), or None.
    """

    steps_per_epoch: int | None
    precomputable: bool
    fingerprint: str | None

    def micro_batches(self, step: int, policy: Policy) -> list[Any]:
        """This process's micro-batches for optimizer step ``step`` (0-based)."""

    def shard(self, world: int, rank: int) -> None:
        """Take process ``rank``'s share of every step, of ``world`` processes."""

    def step_metrics(self) -> dict[str, float]:
        """What the source measured while making the last step's batches (an online source's
        mean reward of the policy's samples, say), logged with the step; {} for none."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RegularizerOutput:
    """value: () differentiable penalty, already a mean over what the regularizer ran."""

    value: torch.Tensor


@runtime_checkable
class Regularizer(Protocol):
    """A penalty the loop adds to every step's loss as ``weight * value``, at most
    ``cap_ratio`` times the step's mean task loss when ``cap_ratio`` > 0: computed once per
    optimizer step (after the micro-batches, its gradient added to theirs), logged as
    ``reg/<name>`` (and ``reg/<name>_capped``). It must depend only on ``(policy, step)``, so
    resume reproduces it, and give every process the same value (its gradient is not
    all-reduced). E.g. ``dpokit.eval.style_regularizer.StyleRegularizer``."""

    name: str
    weight: float
    cap_ratio: float

    def __call__(self, policy: Policy, step: int) -> RegularizerOutput: ...
