"""What a run computes, and which checkpoint may continue it.

A checkpoint records the run's *signature*: the config fields that change the computation, the
data's fingerprint and the code version. Resuming compares it with the new run's and refuses a
difference unless ``resume_allow_changes`` (then each difference is warned).

    >>> signature_changes({"loss.beta": 0.1}, {"loss.beta": 0.2})
    ['loss.beta: 0.1 -> 0.2']
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.schema import SECTIONS, computes
from .checkpoint import CheckpointStore, CorruptCheckpoint


class ResumeMismatch(RuntimeError):
    """Resuming would continue a different computation (data, config or code changed)."""


def run_signature(config: dict[str, dict[str, Any]], data_fingerprint: str,
                  world: int = 1) -> dict[str, Any]:
    """``section.key -> value`` for every field declared to change the math (``computes``),
    plus data and code. The batch counts as the global batch (per-process batch x
    accumulation x processes): losses are normalized by global counts, so a run may resume on
    another process count."""
    signature = {f"{section}.{f.name}": config[section][f.name]
                 for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
                 if computes(cls, f) and f.name in config.get(section, {})}
    optim = config["optim"]
    for key in ("optim.batch_size", "optim.grad_accum_steps"):
        signature.pop(key)
    signature["optim.global_batch_size"] = optim["batch_size"] * optim["grad_accum_steps"] * world
    signature["data.fingerprint"] = data_fingerprint
    signature["dpokit.version"] = __version__
    return signature


def signature_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One ``key: old -> new`` line per field that differs (a missing field counts)."""
    changed = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed]


def find_resumable(store: CheckpointStore, current: dict[str, Any],
                   allow_changes: bool) -> Path | None:
    """The newest checkpoint whose files match their checksums (a corrupt one is named and the
    previous one tried) and whose signature matches ``current``; None when there is none."""
    found = list(reversed(store.complete()))
    for path in found:
        try:
            saved = store.state(path).get("signature", {})
        except CorruptCheckpoint as err:
            warnings.warn(f"resume: {err}; trying the previous checkpoint", stacklevel=3)
            continue
        diffs = signature_changes(saved, current)
        if diffs and not allow_changes:
            raise ResumeMismatch(f"resume: {path} was trained on something else; changed: "
                                 f"{'; '.join(diffs)}. Set resume_allow_changes=true to "
                                 f"continue anyway, or overwrite_output_dir=true to restart")
        for diff in diffs:
            warnings.warn(f"resume with a change: {diff}", stacklevel=3)
        return path
    if found:
        raise CorruptCheckpoint(f"resume: no usable checkpoint in {store.root} "
                                f"(all {len(found)} are corrupt)")
    return None
