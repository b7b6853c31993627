"""Where a causal LM's samples come from: Hugging Face ``generate`` (``hf``, the default:
batched, KV cache) or a vLLM engine on the same CUDA GPU as training (``vllm``), behind one
call: ``sampler(model, tokenizer, prompts, settings) -> K samples per prompt``.

The vLLM engine serves the weights the policy has *now*: before each sampling round it gets
:func:`engine_weights` of the training model, the base model's tensors under their checkpoint
names with each LoRA adapter's delta added (W + scaling·B·A), computed beside the model, so
the trained weights are never merged and unmerged in place (which rounds them), and no
adapter tensor. On a machine without CUDA ``vllm`` is refused with the reason.

    >>> make_sampler("hf", "cpu").name
    'hf'
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ...core.packages import need
from .lora import REFERENCE_ADAPTER, is_peft
from .sampling import Sample, SamplingSettings, prompt_ids, sample_completions, stop_ids, to_sample

SAMPLERS = ("hf", "vllm")


class Sampler(Protocol):
    name: str

    def __call__(self, model: nn.Module, tokenizer, prompts: Sequence[Any],
                 settings: SamplingSettings, progress: Callable | None = None
                 ) -> list[list[Sample]]:
        """``settings.num_samples`` samples for each prompt, in prompt order."""


class HFSampler:
    """``model.generate`` in batches with a KV cache (:func:`sample_completions`)."""

    name = "hf"

    def __call__(self, model, tokenizer, prompts, settings, progress=None):
        return sample_completions(model, tokenizer, prompts, settings, progress)


class Engine(Protocol):
    """What :class:`VLLMSampler` needs of a serving engine (vLLM's ``LLM``, or a fake)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def generate(self, prompts: list[list[int]],
                 settings: SamplingSettings) -> list[list[list[int]]]:
        """For each prompt's token ids, ``settings.num_samples`` lists of drawn token ids."""


def engine_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a serving engine loads to compute what ``model`` computes now, by their
    names in the base model's checkpoint: a peft model's ``base_model.model.`` prefix and
    ``.base_layer`` dropped, each LoRA layer's base weight plus its active adapters' deltas,
    the ``modules_to_save`` copy the model runs now (the original when the adapter is off) under
    the module's own name, no adapter tensor. Tied weights come once. The model is not
    modified.

        >>> engine_weights(nn.Linear(2, 1, bias=False))["weight"].shape
        torch.Size([1, 2])
    """
    if not is_peft(model):
        return {name: p.detach() for name, p in model.named_parameters()}
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    deltas: dict[str, torch.Tensor] = {}
    in_use: dict[str, str] = {}  # a modules_to_save wrapper -> the prefix of the copy it runs
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            off = module.disable_adapters or any(
                a not in module.modules_to_save for a in module.active_adapters)
            in_use[name + "."] = name + (".original_module." if off else
                                         f".modules_to_save.{module.active_adapters[0]}.")
        elif isinstance(module, LoraLayer):
            active = [a for a in module.active_adapters if a != REFERENCE_ADAPTER
                      and a in module.lora_A] if not module.disable_adapters else []
            for adapter in active:
                delta = module.get_delta_weight(adapter).detach()
                key = f"{name}.base_layer.weight"
                deltas[key] = deltas[key] + delta if key in deltas else delta
    out = {}
    for name, p in model.named_parameters():
        if ".lora_" in name:
            continue  # adapter tensors (their deltas are added below)
        wrapper = next((w for w in in_use if name.startswith(w)), None)
        if wrapper is not None:  # the copy the wrapper runs now, under the module's own name
            if not name.startswith(in_use[wrapper]):
                continue  # the copy it does not run (the original, another adapter's)
            name = wrapper + name.removeprefix(in_use[wrapper])
        weight = p.detach()
        if name in deltas:
            weight = weight + deltas[name].to(weight.dtype)
        out[name.removeprefix("base_model.model.").replace(".base_layer", "")] = weight
    return out


class VLLMSampler:
    """Samples with a vLLM engine colocated with training (built at the first call from the
    base model's folder, or by ``engine_factory(model)``), after loading the training model's
    current weights into it (``syncs`` counts the loads)."""

    name = "vllm"

    def __init__(self, engine_factory: Callable[[nn.Module], Engine] | None = None,
                 gpu_memory_utilization: float = 0.3):
        self.factory = engine_factory or (
            lambda model: VLLMEngine(model, gpu_memory_utilization))
        self.engine: Engine | None = None
        self.syncs = 0

    def __call__(self, model, tokenizer, prompts, settings, progress=None):
        if self.engine is None:
            self.engine = self.factory(model)
        self.engine.load_weights(engine_weights(model).items())
        self.syncs += 1
        encoded = prompt_ids(tokenizer, prompts, settings.chat)
        drawn = self.engine.generate(encoded, settings)
        stop = stop_ids(tokenizer)
        return [[to_sample(tokenizer, ids, list(tokens), stop) for tokens in group]
                for ids, group in zip(encoded, drawn, strict=True)]


class VLLMEngine:
    """vLLM's ``LLM`` in this process (``external_launcher``, as TRL's colocate mode), its
    weights replaced through the model runner's ``load_weights``."""

    def __init__(self, model: nn.Module, gpu_memory_utilization: float = 0.3, seed: int = 0):
        base = model.get_base_model() if is_peft(model) else model
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)
        vllm = need("vllm", "vllm", "sampler=vllm")
        dtype = next(base.parameters()).dtype
        self.llm = vllm.LLM(model=base.config._name_or_path, dtype=str(dtype).removeprefix(
            "torch."), gpu_memory_utilization=gpu_memory_utilization, seed=seed,
            distributed_executor_backend="external_launcher", enable_prefix_caching=True)
        self.params = vllm.SamplingParams

    def load_weights(self, weights):
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(list(weights))
        self.llm.reset_prefix_cache()  # cached prompt states were computed by the old weights

    def generate(self, prompts, settings):
        params = self.params(n=settings.num_samples, temperature=settings.temperature,
                             top_p=settings.top_p, max_tokens=settings.max_new_tokens,
                             seed=settings.seed)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params,
                                 use_tqdm=False)
        return [[list(c.token_ids) for c in out.outputs] for out in outs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sampler(name: str, device_kind: str, gpu_memory_utilization: float = 0.3) -> Sampler:
    """The sampler ``name`` on a ``device_kind`` device (``cuda``, ``cpu``, ``mps``)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r}: choose from {', '.join(SAMPLERS)}")
    if name == "hf":
        return HFSampler()
    if device_kind != "cuda":
        raise ValueError(f"sampler=vllm runs a vLLM engine on a CUDA GPU next to training; "
                         f"this run is on {device_kind}: use sampler=hf")
    return VLLMSampler(gpu_memory_utilization=gpu_memory_utilization)
