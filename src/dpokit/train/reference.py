"""The reference service: reference scores precomputed once and cached on disk, or computed
per batch; TR-DPO syncing.

The cache key hashes the reference weights' fingerprint, every token id of the dataset (so
the tokenizer, format and truncation settings are all in it), the precision and the batch
plan, so a second run with the same model and data loads the file instead of running the
reference again. A policy whose scores are random per call cannot have its reference
precomputed; that is refused with a clear message.

    >>> table = ReferenceTable(torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]))
    >>> table.lookup(torch.tensor([1, 0])).tolist()   # chosen of 1, 0, then rejected of 1, 0
    [-3.0, -1.0, -4.0, -2.0]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config.schema import LossConfig
from ..core.paths import cache_root
from ..core.protocols import Objective, Policy
from ..core.signals import cooperative, stop_point

CACHE_VERSION = "dpokit-ref-v2"


@dataclass
class ReferenceTable:
    """values: (N, K) fp32 reference log-probs of the K sequences of each of N examples
    (K = 2 for pairs: chosen, rejected), indexed by ``example_index``."""

    values: torch.Tensor

    def lookup(self, example_index: torch.Tensor) -> torch.Tensor:
        """(E,) example indices -> (S = K·E,) scores in batch order (sequence k of every
        example, then sequence k + 1)."""
        rows = self.values[example_index.to(self.values.device)]  # (E, K)
        return rows.T.reshape(-1).to(example_index.device)  # (K·E,)


def cache_key(*parts: str) -> str:
    text = "\n".join([*parts, CACHE_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class PartialTable:
    """A reference pass in progress: values (N, K) so far (None before the first batch) and
    the numbers of the batches of the plan already computed."""

    values: torch.Tensor | None = None
    done: set[int] = field(default_factory=set)


@torch.no_grad()  # not inference_mode: FSDP2's gather buffers made in it could not train later
def compute_reference_table(policy: Policy, dataset: Sequence, collate: Callable,
                            batches: Sequence[Sequence[int]], device: torch.device,
                            autocast: Callable[[], AbstractContextManager],
                            progress: Callable | None = None,
                            partial: PartialTable | None = None,
                            on_stop: Callable[[PartialTable], str] | None = None
                            ) -> ReferenceTable:
    """Run the reference once over ``batches`` (lists of dataset indices); indices in no batch
    stay 0 (another process computes them). ``partial``: batches already computed (skipped);
    a stop request (SIGINT / SIGTERM) ends the pass between two batches, after ``on_stop``
    kept what was finished (it returns what it kept, for the message).

    Pass the batches training will use: bf16 rounding depends on what shares a row, so
    computing the reference on the same batch composition makes the policy/reference
    log-ratio exactly 0 at the start instead of bf16 noise (~0.3 nats on a 2,000-token pair).
    """
    partial = partial if partial is not None else PartialTable()
    todo = [(b, indices) for b, indices in enumerate(batches) if b not in partial.done]
    with cooperative():
        for b, indices in progress(todo) if progress else todo:
            stop_point("the reference pass", lambda: on_stop(partial) if on_stop
                       else "no reference batch was kept")
            batch = collate([dataset[i] for i in indices]).to(device)
            with autocast():
                scores = policy.reference_logps(batch).logps.float().cpu()  # (S,)
            k = scores.shape[0] // len(indices)
            if partial.values is None:
                partial.values = torch.zeros(len(dataset), k, dtype=torch.float32)
            partial.values[batch.example_index.cpu()] = scores.view(k, -1).T  # (E, K)
            partial.done.add(b)
    values = partial.values
    return ReferenceTable(values if values is not None else torch.zeros(len(dataset), 2))


def _save_atomic(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)


def save_partial(partial: PartialTable, path: Path) -> None:
    """Keep an interrupted pass's finished batches (atomically, with a checksum)."""
    values = partial.values if partial.values is not None else torch.zeros(0, 2)
    _save_atomic({"values": values, "sha256": _checksum(values), "done": sorted(partial.done)},
                 path)


def read_partial(path: Path) -> PartialTable:
    """The finished batches saved at ``path``; an empty table when there is none or it is
    unreadable (then the pass starts over)."""
    if not path.is_file():
        return PartialTable()
    try:
        saved = _read_checked(path)  # one read: values, checksum and the finished batches
        values, done = saved["values"], saved["done"]
    except (ValueError, KeyError):
        return PartialTable()
    return PartialTable(values if values.numel() else None, set(done))


def _checksum(values: torch.Tensor) -> str:
    return hashlib.sha256(values.contiguous().numpy().tobytes()).hexdigest()


def _read_checked(path: Path) -> dict[str, Any]:
    """What was saved at ``path``, its values checked against their checksum; ValueError when
    the file is truncated or altered."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        values = saved["values"]
    except Exception as err:  # truncated zip, unpickling errors, missing keys: all corrupt
        raise ValueError(f"unreadable ({type(err).__name__})") from None
    if saved.get("sha256") != _checksum(values):
        raise ValueError("checksum mismatch")
    return saved


def _read_cached(path: Path) -> ReferenceTable:
    """The table saved at ``path``; ValueError when the file is truncated or altered."""
    return ReferenceTable(_read_checked(path)["values"])


def load_or_compute(cache_dir: str | Path | None, key: str, compute: Callable[[], ReferenceTable],
                    log: Callable[[str], None] = print) -> ReferenceTable:
    """Return the cached table for ``key``, computing and saving it (atomically) if absent,
    or if the cached file is corrupt (checksum), which is reported in one line."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            table = _read_cached(path)
            log(f"reference log-probs: reusing {path}")
            return table
        except ValueError as err:
            log(f"reference log-probs: {path} is corrupt ({err}); recomputing")
    result = compute()
    _save_atomic({"values": result.values, "sha256": _checksum(result.values)}, path)
    log(f"reference log-probs: cached in {path}")
    return result


def reference_precision(ref_precision: str, training: str) -> str:
    """``ref_precision``, where auto follows the ``training`` precision (fp32, bf16, fp16).

    >>> reference_precision("auto", "fp16"), reference_precision("fp32", "bf16")
    ('fp16', 'fp32')
    """
    return training if ref_precision == "auto" else ref_precision


class ReferenceService:
    """Gives the loop the reference scores of each batch, from a precomputed table or a
    forward pass, and syncs the reference for TR-DPO.

    settings: the config's loss section (precompute_ref_logps, ref_cache_dir, ref_sync,
    ref_sync_every, ref_sync_alpha). autocast: the reference forward's precision context.
    """

    def __init__(self, policy: Policy, objective: Objective, settings: LossConfig,
                 accelerator: Any,
                 autocast: Callable[[], AbstractContextManager], precision: str,
                 log: Callable[[str], None] = print, progress: Callable | None = None):
        self.policy, self.objective, self.settings = policy, objective, settings
        self.accelerator, self.autocast, self.precision = accelerator, autocast, precision
        self.log, self.progress = log, progress
        self.tables: dict[str, ReferenceTable] = {}
        caps = policy.capabilities
        if objective.needs_reference and not caps.has_reference:
            raise ValueError(f"loss {objective.name!r} needs a reference model, but the policy "
                             f"has none (reference=none); use reference: copy (or adapter "
                             f"with LoRA)")
        if settings.ref_sync and not caps.reference_sync:
            raise ValueError(f"ref_sync (TR-DPO) needs a policy that declares reference_sync; "
                             f"{type(policy).__name__} with reference={caps.reference!r} "
                             f"does not")
        self.precompute = objective.needs_reference and settings.precompute_ref_logps
        if self.precompute and not caps.deterministic:
            raise ValueError(f"{type(policy).__name__} scores a batch differently on every call "
                             f"(it samples noise or timesteps), so its reference log-probs "
                             f"cannot be precomputed: set precompute_ref_logps=false")

    def prepare(self, name: str, source: Any) -> None:
        """Precompute the reference table of ``source`` (a static source or an eval set) when
        configured; an online source gets its reference per batch."""
        if not (self.precompute and source is not None and source.precomputable):
            return
        if name in self.tables:  # (prepared already, e.g. before a baseline evaluation)
            return
        batches = source.reference_plan()
        key = None
        if self.policy.capabilities.fingerprint and source.fingerprint is not None:
            world, rank = self.accelerator.num_processes, self.accelerator.process_index
            # bf16 numerics depend on the batch composition, so the plan is part of the key
            plan = json.dumps([self.precision, world, rank, source.collate_key, batches])
            key = cache_key(self.policy.fingerprint(), source.fingerprint, plan)
        cache_dir = self.settings.ref_cache_dir or str(cache_root() / "ref_logps")
        partial_path = Path(cache_dir) / f"{key}.partial.pt" if key else None

        def keep(partial: PartialTable) -> str:
            if partial_path is None:
                return "no reference batch was kept (this policy's scores are not cached)"
            save_partial(partial, partial_path)
            return (f"kept {len(partial.done)} of {len(batches)} {name} reference batches in "
                    f"{partial_path}; the next run resumes from them")

        def compute() -> ReferenceTable:
            partial = read_partial(partial_path) if partial_path else PartialTable()
            resumed = f" ({len(partial.done)} batches kept from an interrupted pass)" \
                if partial.done else ""
            self.log(f"reference log-probs: computing for {len(source.dataset)} {name} "
                     f"examples{resumed}")
            progress = self.progress(f"ref {name}") if self.progress else None
            table = compute_reference_table(self.policy, source.dataset, source.collate, batches,
                                            self.accelerator.device, self.autocast, progress,
                                            partial, keep)
            if self.accelerator.num_processes > 1:  # each process computed its own batches
                summed = self.accelerator.reduce(table.values.to(self.accelerator.device), "sum")
                table = ReferenceTable(summed.cpu())
            return table

        self.tables[name] = load_or_compute(cache_dir if key else None, key or "", compute,
                                            self.log)
        if partial_path is not None:
            partial_path.unlink(missing_ok=True)  # complete: the cache file holds it all

    def scores(self, batch: Any, name: str) -> torch.Tensor | None:
        """(S,) reference scores of ``batch``: from the ``name`` table, else a forward pass."""
        if not self.objective.needs_reference:
            return None
        table = self.tables.get(name)
        if table is not None:
            batch.ref_logps = table.lookup(batch.example_index)  # (S,)
            return batch.ref_logps
        with torch.no_grad(), self.autocast():
            return self.policy.reference_logps(batch).logps.float()  # (S,)

    def after_step(self, step: int) -> None:
        """TR-DPO (Gorbatovski et al. 2024): every ``ref_sync_every`` steps,
        θ_ref <- α·θ + (1-α)·θ_ref."""
        s = self.settings
        if s.ref_sync and step % s.ref_sync_every == 0:
            self.policy.sync_reference(s.ref_sync_alpha)
