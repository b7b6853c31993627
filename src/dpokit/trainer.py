"""The training loop: explicit, readable, on accelerate.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` pairs on each process.
Each micro-batch's loss is ``sum(per-pair losses) / (pairs in the whole step, all processes)``
(times the process count, since DDP averages gradients), so accumulation and data-parallel
splits give the same update as one big batch.

    >>> trainer = Trainer(cfg, policy, train_pairs, collate, eval_pairs)   # doctest: +SKIP
    >>> result = trainer.train()                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig
from .losses import LossParams
from .objective import Objective
from .policy import PairLogps, Policy
from .refcache import (
    ReferenceLogps,
    cache_key,
    compute_reference_logps,
    load_or_compute,
    sequential_batches,
)


class NonFiniteError(RuntimeError):
    """The loss or the gradient became NaN/inf; the run stopped before stepping."""


@dataclass
class TrainResult:
    step: int
    history: list[dict] = field(default_factory=list)  # one record per logged step
    eval_history: list[dict] = field(default_factory=list)
    final_dir: str | None = None


def _lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


def build_objective(cfg: TrainConfig) -> Objective:
    params = LossParams(
        beta=cfg.beta, label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma,
        nll_weight=cfg.nll_weight, discopop_tau=cfg.discopop_tau, rdpo_alpha=cfg.rdpo_alpha,
        kto_desirable_weight=cfg.kto_desirable_weight,
        kto_undesirable_weight=cfg.kto_undesirable_weight)
    return Objective.from_names(cfg.loss, cfg.loss_weights, params, f_divergence=cfg.f_divergence,
                                f_alpha=cfg.f_alpha, wpo=cfg.wpo)


class Trainer:
    """Trains any :class:`~dpokit.policy.Policy` on a sequence of pairs with a registered loss."""

    def __init__(self, cfg: TrainConfig, policy: Policy, train_data: Sequence,
                 collate: Callable, eval_data: Sequence | None = None, accelerator=None,
                 data_fingerprints: tuple[str, str] | None = None, log: Callable[[str], None] = print):
        from accelerate import Accelerator

        self.cfg = cfg
        self.policy = policy
        self.train_data = train_data
        self.eval_data = eval_data
        self.collate = collate
        self.log = log
        self.objective = build_objective(cfg)
        if self.objective.needs_reference and not policy.has_reference:
            raise ValueError(f"loss {cfg.loss!r} needs a reference model, but the policy has none "
                             f"(reference='none'); use reference: copy (or adapter with LoRA)")
        if cfg.ref_sync_every and not hasattr(policy, "sync_reference"):
            raise ValueError("ref_sync_every (TR-DPO) needs a policy with sync_reference()")
        for data, name in ((train_data, "train"), (eval_data, "eval")):
            missing = [c for c in self.objective.extra_columns
                       if data is not None and len(data) and c not in getattr(data[0], "extras", {})]
            if missing:
                raise ValueError(f"loss {cfg.loss!r} reads the column(s) {missing}, which the "
                                 f"{name} data does not supply")
        # accelerate's state is a per-process singleton that refuses a second mixed_precision,
        # so the trainer applies its own autocast (cfg.mixed_precision) around the forwards.
        self.accelerator = accelerator or Accelerator(cpu=_launched_without_accelerator())
        _check_launch(self.accelerator)
        self.data_fingerprints = data_fingerprints
        self.output_dir = Path(cfg.output_dir)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.world > 1:  # batch means (KTO's KL estimate, BCO's δ) pooled over processes
            self.objective.reduce_sum = lambda t: self.accelerator.reduce(t, "sum")
        pairs_per_step = cfg.batch_size * cfg.grad_accum_steps * self.world
        self.steps_per_epoch = max(1, math.ceil(len(train_data) / pairs_per_step))
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * self.steps_per_epoch))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.learning_rate,
                                           betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           _lr_lambda(cfg, self.total_steps))
        policy.prepare(self.accelerator)
        self.optimizer = self.accelerator.prepare(self.optimizer)
        self.step = 0
        self.train_ref: ReferenceLogps | None = None
        self.eval_ref: ReferenceLogps | None = None
        self._writer = None

    def autocast(self, bf16: bool | None = None):
        """bf16 autocast for the forwards when ``mixed_precision=bf16``; losses stay fp32."""
        device_type = self.accelerator.device.type
        enabled = self.cfg.mixed_precision == "bf16" if bf16 is None else bf16
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)

    def reference_in_bf16(self) -> bool:
        """The reference forward's precision: ``ref_precision``, where auto follows training."""
        if self.cfg.ref_precision == "auto":
            return self.cfg.mixed_precision == "bf16"
        return self.cfg.ref_precision == "bf16"

    def reference_autocast(self):
        return self.autocast(self.reference_in_bf16())

    # --- data order ----------------------------------------------------------------------
    def _step_micro_batches(self, step: int) -> tuple[list[list[int]], int]:
        """The pair indices of this process's micro-batches at ``step``, and the step's
        global pair count. The order is a seeded permutation per epoch, so it is a pure
        function of (seed, step): resuming needs only the step."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self.cfg.shuffle:
            g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(self.train_data), generator=g).tolist()
        else:
            order = list(range(len(self.train_data)))
        per_step = self.cfg.batch_size * self.cfg.grad_accum_steps * self.world
        chunk = order[offset * per_step:(offset + 1) * per_step]
        mine = chunk[self.rank::self.world]
        micro = [mine[i:i + self.cfg.batch_size] for i in range(0, len(mine), self.cfg.batch_size)]
        return micro, len(chunk)

    # --- reference -----------------------------------------------------------------------
    def _reference_batches(self, name: str) -> list[list[int]]:
        """The batches the reference is precomputed on: training's epoch-0 micro-batches of
        this process (the same row composition as the first training pass), or the eval
        batches, which :meth:`evaluate` uses in the same order."""
        if name == "eval":
            return sequential_batches(len(self.eval_data), self.cfg.eval_batch_size)
        return [mb for step in range(self.steps_per_epoch) for mb in self._step_micro_batches(step)[0]]

    def _precompute_reference(self) -> None:
        if not (self.objective.needs_reference and self.cfg.precompute_ref_logps):
            return
        from .models import cache_root

        cache_dir = self.cfg.ref_cache_dir or str(cache_root() / "ref_logps")
        fingerprint = getattr(self.policy, "fingerprint", lambda: None)()
        bf16 = self.reference_in_bf16()
        for name, data in (("train", self.train_data), ("eval", self.eval_data)):
            if data is None:
                continue
            batches = self._reference_batches(name)
            key = None
            if fingerprint is not None and self.data_fingerprints is not None:
                data_fp = self.data_fingerprints[0 if name == "train" else 1]
                # bf16 numerics depend on the batch composition, so it is part of the key
                layout = json.dumps([bf16, self.cfg.ld_alpha, self.world, self.rank,
                                     repr(getattr(self.collate, "keywords", "")), batches])
                key = cache_key(fingerprint, data_fp, layout)

            def compute(data=data, name=name, batches=batches):
                self.log(f"reference log-probs: computing for {len(data)} {name} pairs")
                table = compute_reference_logps(self.policy, data, self.collate, batches,
                                                self.accelerator.device, self.reference_autocast,
                                                self._progress(f"ref {name}"))
                if self.world > 1:  # each process computed its own micro-batches
                    table.chosen = self.accelerator.reduce(table.chosen.to(self.accelerator.device), "sum").cpu()
                    table.rejected = self.accelerator.reduce(table.rejected.to(self.accelerator.device), "sum").cpu()
                return table

            table = load_or_compute(cache_dir if key else None, key or "", compute, self.log)
            setattr(self, f"{name}_ref", table)

    def _reference(self, batch, table: ReferenceLogps | None):
        if not self.objective.needs_reference:
            return None, None
        if table is not None:
            table.attach(batch)
            return batch.ref_chosen_logps, batch.ref_rejected_logps
        with torch.no_grad(), self.reference_autocast():
            ref = self.policy.reference_logps(batch)
        return ref.chosen.float(), ref.rejected.float()

    # --- one micro-batch -----------------------------------------------------------------
    def _forward_loss(self, batch, table: ReferenceLogps | None):
        ref_chosen, ref_rejected = self._reference(batch, table)
        with self.autocast():
            out = self.policy.logps(batch)
        return self.objective(out, ref_chosen, ref_rejected, batch.extras), out

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        if not torch.isfinite(value).all():
            latest = self.latest_checkpoint()
            kept = f"the last good checkpoint, {latest}, is intact" if latest else "no checkpoint was written"
            raise NonFiniteError(f"{what} is {value.item() if value.numel() == 1 else value} at "
                                 f"step {self.step + 1}; stopping before the optimizer step "
                                 f"({kept}). Try a lower learning_rate or mixed_precision=no.")

    def _train_step(self) -> dict:
        micro_batches, step_pairs = self._step_micro_batches(self.step)
        scale = self.world / step_pairs  # DDP averages over processes; we want the global mean
        totals = torch.zeros(7, dtype=torch.float64)
        tokens = 0
        started = time.perf_counter()
        for i, indices in enumerate(micro_batches):
            batch = self.collate([self.train_data[j] for j in indices]).to(self.accelerator.device)
            tokens += getattr(batch, "num_tokens", 0)
            last = i == len(micro_batches) - 1
            wrapped = getattr(self.policy, "scorer", None)  # skip DDP's all-reduce until the last
            sync = self.accelerator.no_sync(wrapped) if wrapped is not None and not last else nullcontext()
            with sync:
                result, out = self._forward_loss(batch, self.train_ref)
                loss_sum = result.losses.sum()
                self._check_finite(loss_sum, "the loss")
                self.accelerator.backward(loss_sum * scale)
            totals += _pair_sums(result, out)
        params = self.policy.trainable_parameters()
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(params, max_norm)
        grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32)
        self._check_finite(grad_norm, "the gradient norm")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.cfg.ref_sync_every and self.step % self.cfg.ref_sync_every == 0:
            self.policy.sync_reference(self.cfg.ref_sync_alpha)  # TR-DPO
        totals = self.accelerator.reduce(totals.to(self.accelerator.device), "sum").cpu()
        seconds = time.perf_counter() - started
        metrics = _metrics_from_sums(totals, step_pairs)
        metrics.update({"grad_norm": float(grad_norm), "learning_rate": lr,
                        "pairs_per_s": step_pairs / seconds,
                        "tokens_per_s": tokens * self.world / seconds,
                        "epoch": self.step / self.steps_per_epoch, "step": self.step})
        return metrics

    # --- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Sequence | None = None, table: ReferenceLogps | None = None) -> dict:
        """Loss, reward metrics and the model's own log-prob ranking accuracy on ``data``."""
        data = self.eval_data if data is None else data
        table = self.eval_ref if data is self.eval_data else table
        self.policy.train(False)
        totals = torch.zeros(7, dtype=torch.float64)
        own_correct = own_correct_per_token = 0
        for indices in sequential_batches(len(data), self.cfg.eval_batch_size):
            batch = self.collate([data[i] for i in indices]).to(self.accelerator.device)
            result, out = self._forward_loss(batch, table)
            totals += _pair_sums(result, out)
            own_correct += int((out.chosen > out.rejected).sum())
            mean = out.per_token()
            own_correct_per_token += int((mean.chosen > mean.rejected).sum())
        self.policy.train(True)
        metrics = {f"eval/{k}": v for k, v in _metrics_from_sums(totals, len(data)).items()}
        metrics["eval/logp_accuracy"] = own_correct / len(data)
        metrics["eval/logp_accuracy_per_token"] = own_correct_per_token / len(data)
        metrics["step"] = self.step
        return metrics

    # --- checkpoints ---------------------------------------------------------------------
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        root = self.checkpoint_dir()
        done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Write weights, optimizer, scheduler, RNG and position atomically (stage, rename)."""
        from safetensors.torch import save_file

        root = self.checkpoint_dir()
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:07d}"
        if self.accelerator.is_main_process:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
            state = {k: v.contiguous().cpu() for k, v in self.policy.trainable_state_dict().items()}
            save_file(state, staging / "trainable.safetensors")
            torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, staging / "rng.pt")
            (staging / "state.json").write_text(json.dumps(
                {"step": self.step, "config": asdict(self.cfg)}, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            for old in sorted(root.glob("step-*"))[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        self.policy.load_trainable_state_dict(load_file(path / "trainable.safetensors"))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = json.loads((path / "state.json").read_text())["step"]

    # --- logging -------------------------------------------------------------------------
    def _progress(self, desc: str):
        """A tqdm wrapper for iterables when progress bars are on (main process only)."""
        if not (self.cfg.progress_bar and self.accelerator.is_main_process):
            return None
        from tqdm.auto import tqdm

        return lambda items: tqdm(items, desc=desc, leave=False, dynamic_ncols=True)

    def _emit(self, metrics: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.output_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.cfg.tensorboard:
            if self._writer is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
                except ImportError:
                    self.cfg.tensorboard = False
                    return
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, metrics["step"])

    # --- the loop ------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        result = TrainResult(step=0)
        if cfg.resume:
            latest = self.latest_checkpoint()
            if latest is None:
                self.log(f"resume: no checkpoint in {self.checkpoint_dir()}; starting fresh")
            else:
                self.load_checkpoint(latest)
                self.log(f"resume: continuing from {latest} (step {self.step})")
        self._precompute_reference()
        self.policy.train(True)
        bar = None
        if cfg.progress_bar and self.accelerator.is_main_process:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, desc="dpokit", dynamic_ncols=True)
        while self.step < self.total_steps:
            metrics = self._train_step()
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                result.history.append(metrics)
                self._emit(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}",
                                margin=f"{metrics['rewards/margins']:.3f}")
            if self.eval_data is not None and cfg.eval_every and self.step % cfg.eval_every == 0:
                eval_metrics = self.evaluate()
                result.eval_history.append(eval_metrics)
                self._emit(eval_metrics)
                self.log(_format_eval(eval_metrics))
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if self.eval_data is not None and not (cfg.eval_every and self.step % cfg.eval_every == 0):
            eval_metrics = self.evaluate()
            result.eval_history.append(eval_metrics)
            self._emit(eval_metrics)
            self.log(_format_eval(eval_metrics))
        result.step = self.step
        if self._writer is not None:
            self._writer.close()
        return result

    def close(self) -> None:
        """End a run: wait for every process, then tear the process group down, so that no
        process exits while another still talks to it (gloo can abort the survivor)."""
        self.accelerator.wait_for_everyone()
        if self.world > 1:
            self.accelerator.end_training()

    def save_final(self, directory: str | Path | None = None) -> Path:
        """Save the trained model (or adapter) in the ordinary HF format, atomically."""
        target = Path(directory) if directory else self.output_dir / "final"
        if self.accelerator.is_main_process:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-final-", dir=target.parent))
            self.policy.save_pretrained(staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        self.accelerator.wait_for_everyone()
        return target


def _launcher_world_size() -> int:
    """Processes the launcher (torchrun, accelerate launch) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _launched_without_accelerator() -> bool:
    """Several processes (torchrun, accelerate launch) on a machine with no GPU. accelerate then
    stays single-process unless asked for the CPU, and each process would train alone."""
    xpu = getattr(torch, "xpu", None)
    has_accelerator = torch.cuda.is_available() or (xpu is not None and xpu.is_available())
    return _launcher_world_size() > 1 and not has_accelerator


def _check_launch(accelerator) -> None:
    """Refuse what would silently train wrong: a process count that does not match the
    launcher's, or a sharding engine this trainer does not drive (its optimizer is built on
    the unwrapped parameters, and checkpoints save whole tensors)."""
    launched = _launcher_world_size()
    if accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes (WORLD_SIZE) but accelerate runs "
                           f"{accelerator.num_processes}: each process would train alone on all "
                           f"the data. Launch with torchrun or `accelerate launch` on a machine "
                           f"whose devices accelerate sees, or pass an Accelerator that matches.")
    engine = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if engine in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise NotImplementedError(f"distributed type {engine} is not supported yet: dpokit trains "
                                  f"data-parallel (DDP), one process per device, on one or more "
                                  f"machines. Launch without the {engine} plugin.")


_SUM_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
             "rewards/margins", "logps/chosen", "logps/rejected")


def _pair_sums(result, out: PairLogps) -> torch.Tensor:
    """Sums over the pairs of a micro-batch, in the order of ``_SUM_KEYS``."""
    c, r = result.chosen_rewards.float(), result.rejected_rewards.float()
    return torch.stack([
        result.losses.detach().float().sum(), c.sum(), r.sum(), (c > r).float().sum(),
        (c - r).sum(), out.chosen.detach().float().sum(), out.rejected.detach().float().sum(),
    ]).double().cpu()


def _metrics_from_sums(totals: torch.Tensor, pairs: int) -> dict:
    return {key: float(value) / pairs for key, value in zip(_SUM_KEYS, totals, strict=False)}


def _format_eval(m: dict) -> str:
    return (f"[eval @ step {m['step']}] loss {m['eval/loss']:.4f}  reward acc "
            f"{m['eval/rewards/accuracies']:.3f}  margin {m['eval/rewards/margins']:.4f}  "
            f"logp acc {m['eval/logp_accuracy']:.3f}")
