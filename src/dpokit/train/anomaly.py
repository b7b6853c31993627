"""When the NaN guard stops a run: replay the step's micro-batches to name the first non-finite
tensor (a trained parameter, the output of a module in the order the forward ran them, the
loss, or the backward function autograd's anomaly mode catches), and save the batch and the
finding in the run folder (``nonfinite.json``, ``nonfinite_batch.pt``) for reproduction;
``dpokit doctor`` reports it.

    >>> first_nonfinite([torch.nn.Linear(2, 2)], lambda: torch.tensor(float("nan")))
    'the loss: nan'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten


def _bad(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and bool(
        (~torch.isfinite(value.detach())).any())


def first_nonfinite(modules: Sequence[torch.nn.Module],
                    loss: Callable[[], torch.Tensor]) -> str | None:
    """The first non-finite tensor of one forward and backward: a parameter of ``modules``,
    a module's output (forward order), the loss ``loss()`` returns, or the backward function
    that produced one; None when all are finite."""
    for module in modules:
        for name, param in module.named_parameters():
            if _bad(param):
                return f"the parameter {name} holds non-finite values"
    seen: list[str] = []
    hooks = []

    def watch(name: str):
        def hook(_module, _inputs, output):
            if not seen and any(_bad(t) for t in tree_flatten(output)[0]):
                seen.append(f"the output of module {name or type(_module).__name__}")
        return hook

    for module in modules:
        for name, sub in module.named_modules():
            hooks.append(sub.register_forward_hook(watch(name)))
    try:
        with torch.autograd.detect_anomaly(check_nan=True):
            value = loss()
            if seen:
                return seen[0]
            if _bad(value):
                return f"the loss: {value.detach().flatten()[0].item()}"
            if value.requires_grad:
                value.sum().backward()
    except RuntimeError as err:  # anomaly mode: the backward function that made a NaN
        first = str(err).splitlines()[0]
        return f"backward: {first}"
    finally:
        for hook in hooks:
            hook.remove()
    return None


def record(folder: str | Path, step: int, what: str, first: str | None, batch: Any) -> Path:
    """``nonfinite.json`` (the step, what the guard saw, the first non-finite tensor) and the
    batch that shows it (``nonfinite_batch.pt``), in the run folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if batch is not None:
        torch.save(batch, folder / "nonfinite_batch.pt")
    path = folder / "nonfinite.json"
    path.write_text(json.dumps({"step": step, "what": what, "first_nonfinite": first,
                                "batch": "nonfinite_batch.pt" if batch is not None else None},
                               indent=1))
    return path


def replay_step(modules: Any, forward: Callable[[Any], torch.Tensor], batches: Sequence[Any],
                *, what: str, step: int, folder: str | Path, world: int = 1,
                is_main: bool = True) -> str:
    """Replay the step's micro-batches ``batches`` one by one through ``forward`` (a batch ->
    its per-example losses) with hooks on ``modules``, until one shows a non-finite tensor;
    record it in the run ``folder`` (main process) and return a clause for the guard's
    message (empty when the replay finds nothing). Only in one process (``world`` 1): a
    replay's forward and backward are collective under DDP, FSDP2 and ZeRO, and the other
    processes would not join it."""
    if world > 1:
        return "; to name the first non-finite tensor, rerun this step in one process"
    found, shown = None, None
    for batch in batches:
        found = first_nonfinite(modules, lambda b=batch: forward(b))
        if found:
            shown = batch
            break
    if is_main:
        path = record(folder, step, what, found, shown.to("cpu") if shown is not None else None)
        where = f"; first non-finite: {found}" if found else ""
        return f"{where}; recorded in {path}"
    return f"; first non-finite: {found}" if found else ""
