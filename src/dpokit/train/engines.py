"""Who runs backward and the optimizer step: PyTorch (DDP through accelerate, or FSDP2) or
DeepSpeed ZeRO. The loop calls the same five methods either way:

- ``paused()``: accumulate this backward locally (the last micro-batch's backward syncs);
- ``backward(loss)``; ``step(params, max_norm, check) -> grad norm``: clip, check the norm
  (``check`` raises on NaN/inf), update, zero the gradients;
- ``optimizer_state(named)`` / ``load_optimizer_state(named, saved)``: the optimizer's
  state as whole tensors keyed by parameter name, the same format for every engine, so a
  checkpoint moves between engines and process counts.

DeepSpeed is driven as torchtune drives FSDP2: dpokit calls ``deepspeed.initialize`` with
its own optimizer and the config :func:`deepspeed_config` writes from the typed config, and
steps its own learning-rate schedule; accelerate launches the processes and reduces metrics.

    >>> cfg = deepspeed_config(3, None, batch_size=2, world=4, max_grad_norm=1.0)
    >>> cfg["train_batch_size"], cfg["zero_optimization"]["stage"], cfg["gradient_clipping"]
    (8, 3, 1.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from ..core.catalogue import Metric, declare
from ..core.sharding import whole
from .checkpoint import load_optimizer_state_by_name, optimizer_state_by_name
from .strategy import gradient_sync_paused

# the parts of a DeepSpeed config that dpokit's typed config owns
_OWNED = {"train_batch_size": "optim.batch_size x processes",
          "train_micro_batch_size_per_gpu": "optim.batch_size",
          "gradient_accumulation_steps": "optim.grad_accum_steps (dpokit accumulates)",
          "gradient_clipping": "optim.max_grad_norm",
          "optimizer": "optim (dpokit's AdamW)", "scheduler": "optim.lr_scheduler",
          "bf16": "optim.mixed_precision (dpokit's autocast)",
          "fp16": "optim.mixed_precision (dpokit's autocast)"}


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config file sets what dpokit's config owns, or cannot be read."""


def deepspeed_config(zero_stage: int, path: str | None, *, batch_size: int, world: int,
                     max_grad_norm: float | None) -> dict[str, Any]:
    """The DeepSpeed config of a run: the file's own settings (offload, buckets, ...), with
    the batch sizes, clipping and ZeRO stage from dpokit's config. A key dpokit owns may be
    absent or ``"auto"`` in the file; any other value is an error naming the field to set.
    ``path`` None: accelerate launch's ``deepspeed_config_file``, if it gave one."""
    path = path or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    base: dict[str, Any] = {}
    if path:
        try:
            base = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise DeepSpeedConfigError(f"{path}: {err}") from None
    for key, owner in _OWNED.items():
        value = base.get(key, "auto")
        disabled = key in ("bf16", "fp16") and isinstance(value, dict) and not value.get(
            "enabled")
        if value != "auto" and not disabled:
            raise DeepSpeedConfigError(f"{path}: {key} is set by dpokit from {owner}; "
                                       f"remove it or write \"auto\"")
        base.pop(key, None)
    zero = dict(base.pop("zero_optimization", {}))
    if zero.get("stage", "auto") not in ("auto", zero_stage):
        raise DeepSpeedConfigError(f"{path}: zero_optimization.stage={zero['stage']} but "
                                   f"distributed.zero_stage={zero_stage}; set one of them")
    zero["stage"] = zero_stage
    return {**base, "train_micro_batch_size_per_gpu": batch_size,
            "train_batch_size": batch_size * world, "gradient_accumulation_steps": 1,
            "gradient_clipping": float(max_grad_norm or 0.0), "zero_optimization": zero,
            # dpokit's AdamW (a torch optimizer) also when ZeRO offloads it to the CPU
            "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": base.get("steps_per_print", 10**9),
            "wall_clock_breakdown": base.get("wall_clock_breakdown", False)}


def _scalars(entry: dict[str, Any]) -> dict[str, Any]:
    """The per-step scalars of one optimizer-state entry (AdamW's ``step``), copied; the rest
    are tensors shaped like the parameter."""
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in entry.items()
            if not torch.is_tensor(v) or v.numel() == 1}


declare(Metric("loss_scale", "fp16 loss scale", "{:.0f}", "fp16 loss scaling"),
        Metric("skipped_steps", "fp16 steps skipped on overflow", "{:.0f}", "fp16 loss scaling"))


class TorchEngine:
    """DDP (accelerate's wrapper; ``no_sync`` between micro-batches) or FSDP2
    (``set_requires_gradient_sync``); the torch optimizer stepped here.

    loss_scaling (fp16): backward runs on the loss times a dynamic scale
    (``torch.amp.GradScaler``); the gradients are unscaled before clipping, and a step whose
    gradients overflowed is skipped and counted (``skipped_steps``), not taken for a NaN: the
    scale halves and training goes on. Only a loss that is not finite, or overflow at every
    step for ``MAX_SKIPPED_IN_A_ROW`` steps, stops the run."""

    MAX_SKIPPED_IN_A_ROW = 25  # the scale has then fallen by 2^25: the model itself diverged

    def __init__(self, accelerator: Any, optimizer: Any, strategy: str,
                 modules: Sequence[torch.nn.Module], loss_scaling: bool = False):
        self.accelerator, self.strategy, self.modules = accelerator, strategy, list(modules)
        self.optimizer = accelerator.prepare(optimizer)
        self.scaler = (torch.amp.GradScaler(accelerator.device.type) if loss_scaling
                       else None)
        self.skipped_steps, self.skipped_in_a_row = 0, 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        with ExitStack() as stack:
            for module in self.modules:
                stack.enter_context(gradient_sync_paused(self.accelerator, module,
                                                         self.strategy))
            yield

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss if self.scaler is None else self.scaler.scale(loss))

    def step(self, params: list[torch.nn.Parameter], max_norm: float,
             check: Callable[[torch.Tensor], None]) -> float:
        if self.scaler is not None:
            return self._scaled_step(params, max_norm, check)
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        norm = torch.as_tensor(whole(norm), dtype=torch.float32)  # FSDP2: a DTensor
        check(norm)  # before the update: a NaN never reaches the weights
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _scaled_step(self, params: list[torch.nn.Parameter], max_norm: float,
                     check: Callable[[torch.Tensor], None]) -> float:
        """fp16: unscale, clip, then step unless the gradients overflowed (then skip, count,
        and let the scaler halve the scale)."""
        self.scaler.unscale_(self.optimizer)
        norm = torch.as_tensor(self.accelerator.clip_grad_norm_(params, max_norm),
                               dtype=torch.float32)
        overflow = not bool(torch.isfinite(norm))
        if overflow:
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.MAX_SKIPPED_IN_A_ROW:
                check(norm)  # not an overflow the scale can fix: the NaN guard's case
        else:
            self.skipped_in_a_row = 0
        self.scaler.step(self.optimizer)  # skipped by the scaler itself on overflow
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def step_metrics(self) -> dict[str, float]:
        """fp16: the loss scale and the steps skipped on overflow so far."""
        if self.scaler is None:
            return {}
        return {"loss_scale": float(self.scaler.get_scale()),
                "skipped_steps": float(self.skipped_steps)}

    def optimizer_state(self, named: dict[str, torch.nn.Parameter]) -> dict[str, Any]:
        state = optimizer_state_by_name(named, self.optimizer)
        if self.scaler is not None:  # resume continues with the same scale and counts
            state["grad_scaler"] = {**self.scaler.state_dict(),
                                    "skipped_steps": self.skipped_steps,
                                    "skipped_in_a_row": self.skipped_in_a_row}
        return state

    def load_optimizer_state(self, named: dict[str, torch.nn.Parameter],
                             saved: dict[str, Any]) -> None:
        scaler = dict(saved.get("grad_scaler") or {})
        if self.scaler is not None and scaler:
            self.skipped_steps = scaler.pop("skipped_steps", 0)
            self.skipped_in_a_row = scaler.pop("skipped_in_a_row", 0)
            self.scaler.load_state_dict(scaler)
        load_optimizer_state_by_name(named, self.optimizer,
                                     {k: v for k, v in saved.items() if k != "grad_scaler"})


class ZeroEngine:
    """DeepSpeed ZeRO around ``module`` (the policy's root) and dpokit's optimizer.

    The loop's losses are already normalized by the step's global units, so backward does
    not divide by the accumulation steps; the boundary is set by hand (``paused``), and
    DeepSpeed clips by ``gradient_clipping``. DeepSpeed skips an update whose gradient norm
    is not finite; ``check`` then stops the run, as the torch engine does before stepping."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 config: dict[str, Any]):
        from ..core.packages import need

        need("deepspeed", "deepspeed", "distributed.strategy=deepspeed")
        import deepspeed

        self.engine, self.zero, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                            config=config)
        self.optimizer = optimizer  # the torch optimizer over ZeRO's flat fp32 partitions
        self.modules = [self.engine]  # what the policy forwards through (as TorchEngine's)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.engine.set_gradient_accumulation_boundary(False)
        try:
            yield
        finally:
            self.engine.set_gradient_accumulation_boundary(True)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, params: list[torch.nn.Parameter], max_norm: float,
             check: Callable[[torch.Tensor], None]) -> float:
        self.engine.step()  # reduce, clip, update, zero the gradients
        norm = self.engine.get_global_grad_norm()
        norm = torch.as_tensor(float("nan") if norm is None else float(norm))
        check(norm)
        return float(norm)

    def step_metrics(self) -> dict[str, float]:
        return {}

    def optimizer_state(self, named: dict[str, torch.nn.Parameter]) -> dict[str, Any]:
        """Whole state tensors by name, gathered from ZeRO's partitions (collective)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        groups = self.optimizer.param_groups
        if len(groups) != 1:
            raise ValueError(f"the ZeRO checkpoint writer expects one parameter group, "
                             f"got {len(groups)}")
        flat_states = [s for s in self.optimizer.state.values() if s]
        state: dict[str, dict[str, Any]] = {}
        if flat_states:
            keys = [k for k in flat_states[0] if k not in _scalars(flat_states[0])]
            for name, param in named.items():
                state[name] = {**_scalars(flat_states[0]),
                               **{k: safe_get_full_optimizer_state(param, k).detach().cpu()
                                  for k in keys}}
        hyper = {k: v for k, v in groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**hyper, "params": list(named)}]}

    def load_optimizer_state(self, named: dict[str, torch.nn.Parameter],
                             saved: dict[str, Any]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        (group,) = self.optimizer.param_groups
        (saved_group,) = saved["param_groups"]
        unknown = sorted(set(saved_group["params"]) - set(named))
        if unknown:
            raise ValueError(f"checkpoint optimizer has unknown parameters {unknown[:3]}")
        group.update({k: v for k, v in saved_group.items() if k != "params"})
        if not saved["state"]:
            return
        first = next(iter(saved["state"].values()))
        scalars = _scalars(first)
        # ZeRO's fp32 partitions (stage 3 swaps them into the torch group one at a time)
        flats = (getattr(self.zero, "fp32_partitioned_groups_flat", None)
                 or self.zero.single_partition_of_fp32_groups)
        for flat in flats:  # the state torch creates at the first step, made now
            self.optimizer.state[flat] = {
                **_scalars(first), **{k: torch.zeros_like(flat) for k in first
                                      if k not in scalars}}
        for name, entry in saved["state"].items():
            for key, value in entry.items():
                if key not in scalars:
                    param = named[name]
                    safe_set_full_optimizer_state(param, value.to(param.device, torch.float32),
                                                  key)


def zero_engine(policy: Any, accelerator: Any, optim: Any, distributed: Any,
                total_steps: int) -> tuple[ZeroEngine, Any]:
    """DeepSpeed ZeRO: the policy prepares its modules, then hands its root to ``wrap``,
    which builds the optimizer (``optim`` section) and the engine; the policy forwards
    through the engine. Returns the engine and the learning-rate schedule."""
    from .optim import build_optimizer
    from .strategy import zero_settings

    config = deepspeed_config(distributed.zero_stage, distributed.deepspeed_config,
                              batch_size=optim.batch_size, world=accelerator.num_processes,
                              max_grad_norm=optim.max_grad_norm)
    made: list[tuple[ZeroEngine, Any]] = []

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        optimizer, scheduler = build_optimizer(policy.trainable_parameters(), optim, total_steps,
                                               allow_fused=False)
        made.append((ZeroEngine(module, optimizer, config), scheduler))
        return made[-1][0].engine

    policy.shard(zero_settings(accelerator, config, wrap))
    if len(made) != 1:
        raise RuntimeError(f"{type(policy).__name__}.shard must wrap its root module "
                           f"once with ShardSettings.wrap (called {len(made)} times)")
    return made[0]
