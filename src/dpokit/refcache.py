"""Reference log-probs computed once, before training, and cached on disk.

The cache key hashes the reference weights' fingerprint, every token id of the dataset (so the
tokenizer, format and truncation settings are all in it) and the precision, so a second run
with the same model and data loads the file instead of running the reference again.

    >>> table = load_or_compute(cache_dir, key, compute)   # doctest: +SKIP
    >>> table.chosen.shape                                 # (N,)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ReferenceLogps:
    """chosen / rejected: (N,) fp32 reference log-probs, indexed by ``pair_index``."""

    chosen: torch.Tensor
    rejected: torch.Tensor

    def attach(self, batch) -> None:
        """Fill ``batch.ref_chosen_logps`` / ``ref_rejected_logps`` from the table."""
        index = batch.pair_index.to(self.chosen.device)
        batch.ref_chosen_logps = self.chosen[index].to(batch.pair_index.device)  # (B,)
        batch.ref_rejected_logps = self.rejected[index].to(batch.pair_index.device)  # (B,)


def cache_key(policy_fingerprint: str, data_fingerprint: str, precision: str) -> str:
    text = "\n".join([policy_fingerprint, data_fingerprint, precision, "dpokit-ref-v1"])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@torch.inference_mode()
def compute_reference_logps(policy, dataset: Sequence, collate: Callable,
                            batches: Sequence[Sequence[int]], device: torch.device,
                            autocast: Callable | None = None,
                            progress: Callable | None = None) -> ReferenceLogps:
    """Run the reference once over ``batches`` (lists of dataset indices) and return its
    log-probs; indices in no batch stay 0 (another process computes them).

    Pass the batches training will use: bf16 rounding depends on what shares a row, so
    computing the reference on the same batch composition makes the policy/reference
    log-ratio exactly 0 at the start instead of bf16 noise (~0.3 nats on a 2,000-token pair).
    """
    chosen = torch.zeros(len(dataset), dtype=torch.float32)
    rejected = torch.zeros(len(dataset), dtype=torch.float32)
    for indices in progress(batches) if progress else batches:
        batch = collate([dataset[i] for i in indices]).to(device)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            out = policy.reference_logps(batch)
        chosen[batch.pair_index.cpu()] = out.chosen.float().cpu()
        rejected[batch.pair_index.cpu()] = out.rejected.float().cpu()
    return ReferenceLogps(chosen, rejected)


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    """[[0, 1, ..., batch_size-1], [batch_size, ...], ...] covering range(n)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def load_or_compute(cache_dir: str | Path | None, key: str, compute: Callable[[], ReferenceLogps],
                    log: Callable[[str], None] = print) -> ReferenceLogps:
    """Return the cached table for ``key``, computing and saving it (atomically) if absent."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        log(f"reference log-probs: reusing {path}")
        return ReferenceLogps(saved["chosen"], saved["rejected"])
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"chosen": result.chosen, "rejected": result.rejected}, tmp)
    os.replace(tmp, path)
    log(f"reference log-probs: cached in {path}")
    return result
