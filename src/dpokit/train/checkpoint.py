"""Checkpoints and the final model: atomic writes (stage aside, then rename), rotation,
resume, and a model card.

A checkpoint holds the trainable weights, optimizer, scheduler, RNG states, the data source's
state and the step; a folder counts only once its ``state.json`` exists, and it is written
last inside the staging folder, so a kill at any moment leaves the previous one intact.

    >>> store = CheckpointStore("outputs/run", keep=2)     # doctest: +SKIP
    >>> store.latest()                                     # doctest: +SKIP
    PosixPath('outputs/run/checkpoints/step-0000100')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.schema import TrainConfig
from ..core.protocols import Policy, PolicyDescription
from ..core.sharding import like, whole


def _stage(parent: Path, prefix: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging``: set the old one aside, rename the new one in, then
    delete the old one. Killed halfway, the old one is put back at the next start
    (``RunFolder.clean_staging``)."""
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}{time.monotonic_ns()}"
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file is missing, truncated or does not match its recorded checksum."""


def optimizer_state_by_name(params: dict[str, torch.Tensor], optimizer: Any) -> dict[str, Any]:
    """The optimizer's state as whole tensors keyed by parameter name (not by position, not
    sharded): ``{"state": {name: {key: tensor}}, "param_groups": [{..., "params": [names]}]}``.

    >>> w = torch.nn.Parameter(torch.ones(2)); opt = torch.optim.SGD([w], lr=0.1)
    >>> optimizer_state_by_name({"w": w}, opt)["param_groups"][0]["params"]
    ['w']
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    name_of = {id(p): n for n, p in params.items()}
    state = {name_of[id(p)]: {k: whole(v).detach().cpu() if torch.is_tensor(v) else v
                              for k, v in optimizer.state[p].items()}
             for group in optimizer.param_groups for p in group["params"] if p in optimizer.state}
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [name_of[id(p)] for p in g["params"]]} for g in optimizer.param_groups]
    return {"state": state, "param_groups": groups}


def load_optimizer_state_by_name(params: dict[str, torch.Tensor], optimizer: Any,
                                 saved: dict[str, Any]) -> None:
    """Restore :func:`optimizer_state_by_name`'s output, each tensor laid out as its
    parameter is (sharded or not)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("checkpoint optimizer does not match this run's parameter groups")
    for group, saved_group in zip(optimizer.param_groups, groups, strict=True):
        missing = sorted(set(saved_group["params"]) - set(params))
        if missing:
            raise ValueError(f"checkpoint optimizer has unknown parameters {missing[:3]}")
        group.update({k: v for k, v in saved_group.items() if k != "params"})
        group["params"] = [params[n] for n in saved_group["params"]]
    optimizer.state.clear()
    for name, entry in saved["state"].items():
        p = params[name]
        optimizer.state[p] = {k: like(p, v) if torch.is_tensor(v) and v.shape == p.shape
                              else v for k, v in entry.items()}


@dataclass(frozen=True)
class Restored:
    """What :meth:`CheckpointStore.load` gives back besides the weights it wrote in place:
    the step, the data source's state and the objective's (running statistics)."""

    step: int
    source: dict[str, Any]
    objective: dict[str, Any]


class CheckpointStore:
    """``output_dir/checkpoints/step-NNNNNNN`` folders, the newest ``keep`` kept.

    is_main: this process writes (the others wait at ``barrier``)."""

    def __init__(self, output_dir: str | Path, keep: int = 2, is_main: bool = True,
                 barrier: Callable[[], None] = lambda: None):
        self.root = Path(output_dir) / "checkpoints"
        self.keep, self.is_main, self.barrier = keep, is_main, barrier

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step-*") if (p / "state.json").is_file())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, policy: Policy, engine: Any, scheduler: Any,
             source_state: dict[str, Any], signature: dict[str, Any],
             objective_state: dict[str, Any] | None = None) -> Path:
        """Every process calls it (a sharded policy gathers whole tensors); the main one
        writes. Weights and optimizer state (``engine.optimizer_state``) are whole tensors
        keyed by parameter name, so any process count or engine (DDP, FSDP2, ZeRO) can
        resume from it."""
        from safetensors.torch import save_file

        final = self.root / f"step-{step:07d}"
        weights = policy.trainable_state_dict()
        optim_state = engine.optimizer_state(policy.named_trainable_parameters())
        if self.is_main:
            staging = _stage(self.root, ".staging-")
            state = {k: v.contiguous().cpu() for k, v in weights.items()}
            save_file(state, staging / "trainable.safetensors")
            torch.save(optim_state, staging / "optimizer.pt")
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
            rng = {"torch": torch.get_rng_state(), **python_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, staging / "rng.pt")
            torch.save(source_state, staging / "source.pt")
            torch.save(objective_state or {}, staging / "objective.pt")
            files = {f.name: _sha256(f) for f in sorted(staging.iterdir())}
            (staging / "state.json").write_text(json.dumps(
                {"step": step, "signature": signature, "files": files}, indent=1, default=str))
            _swap_in(staging, final)
            for old in sorted(self.root.glob("step-*"))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    def state(self, path: Path) -> dict[str, Any]:
        """The checkpoint's ``state.json`` after checking every file against its checksum."""
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError) as err:
            raise CorruptCheckpoint(f"{path}/state.json: {err}") from None
        for name, digest in state.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise CorruptCheckpoint(f"{file} is missing")
            if _sha256(file) != digest:
                raise CorruptCheckpoint(f"{file} is corrupt (checksum mismatch)")
        return state

    def load(self, path: Path, policy: Policy, engine: Any, scheduler: Any) -> Restored:
        """Restore weights, optimizer, scheduler and RNG; return the step and the states the
        data source and the objective restore."""
        from safetensors.torch import load_file

        self.state(path)
        policy.load_trainable_state_dict(load_file(path / "trainable.safetensors"))
        engine.load_optimizer_state(policy.named_trainable_parameters(),
                                    load_tensors(path / "optimizer.pt"))
        scheduler.load_state_dict(load_tensors(path / "scheduler.pt"))
        rng = load_tensors(path / "rng.pt")
        torch.set_rng_state(rng["torch"])
        random.setstate(python_rng(rng))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

        def saved(name: str) -> dict[str, Any]:  # (older checkpoints lack objective.pt)
            file = path / name
            return load_tensors(file) if file.is_file() else {}

        return Restored(json.loads((path / "state.json").read_text())["step"],
                        saved("source.pt"), saved("objective.pt"))


def load_tensors(file: Path) -> Any:
    """A ``.pt`` file dpokit wrote, read with ``weights_only=True``: tensors, numbers, strings
    and containers of them, never code. A file holding anything else (a pickled object, as a
    checkpoint folder from someone else could) is refused with one line, before it runs.
    """
    import pickle

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptCheckpoint(f"{file}: refused: it holds objects other than tensors and "
                                f"numbers, and loading them would run code from the file "
                                f"({first[:160]})") from None


def python_rng_state() -> dict[str, Any]:
    """Python's ``random`` state in a tensor-only form (what ``weights_only`` reads)."""
    version, state, gauss = random.getstate()
    return {"python_version": version, "python_state": torch.tensor(state, dtype=torch.int64),
            "python_gauss": gauss}


def python_rng(rng: dict[str, Any]) -> tuple:
    """The ``random.setstate`` argument of :func:`python_rng_state`'s form (or an older
    checkpoint's plain tuple)."""
    if "python" in rng:
        return rng["python"]
    return (rng["python_version"], tuple(rng["python_state"].tolist()), rng["python_gauss"])


def save_final(policy: Policy, target: str | Path, card: str | None = None,
               is_main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """Save the trained model (or adapter) in its ordinary format, with ``README.md`` (the
    model card) and ``dpokit.json`` (what the policy says it is: the one loader reads the
    modality back), atomically. Every process calls it (a sharded policy gathers); the main
    one writes."""
    target = Path(target)
    staging = _stage(target.parent, ".staging-final-") if is_main else None
    policy.save_pretrained(staging)
    if staging is not None:
        (staging / "dpokit.json").write_text(json.dumps(dataclasses.asdict(policy.describe()),
                                                        indent=1))
        if card is not None:
            (staging / "README.md").write_text(card)
        _swap_in(staging, target)
    barrier()
    return target


def model_card(what: PolicyDescription, cfg: TrainConfig, objective: str,
               metrics: dict[str, float], precision: str | None = None) -> str:
    """A Hugging Face model card: what the policy says it is (``what``: base model, adapter or
    full, modality), the run's data, objective and hyper-parameters, the final metrics.

    >>> from dpokit.config import TrainConfig
    >>> card = model_card(PolicyDescription("recommender", "NextItemModel"), TrainConfig(),
    ...                   "sigmoid", {"eval/loss": 0.5})
    >>> card.splitlines()[1], card.splitlines()[8]
    ('base_model: NextItemModel', '# recommender model trained with dpokit')
    """
    d, loss, optim = cfg.data, cfg.loss, cfg.optim
    hyper = {"loss": loss.name, "beta": loss.beta, "learning_rate": optim.learning_rate,
             "lr_scheduler": optim.lr_scheduler, "batch_size": optim.batch_size,
             "grad_accum_steps": optim.grad_accum_steps, "num_epochs": optim.num_epochs,
             "max_steps": optim.max_steps,
             "mixed_precision": precision or optim.mixed_precision, "seed": optim.seed}
    if what.kind == "adapter":
        hyper.update(lora_r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha)
    tags = ["dpokit", what.modality] + (["peft", "lora"] if what.kind == "adapter" else [])
    title = {"adapter": "LoRA adapter", "merged": "Model (LoRA merged in)"}.get(
        what.kind, f"{what.modality} model")
    lines = ["---", f"base_model: {what.model}", f"library_name: {what.library}",
             "tags:", *[f"- {t}" for t in tags], "---", "",
             f"# {title} trained with dpokit", "",
             f"- **Base model**: `{what.model}`", f"- **Modality**: `{what.modality}`",
             f"- **Objective**: `{objective}`"]
    lines += [f"- **{name} data**: `{path}`"
              for name, path in (("Train", d.train_data), ("Eval", d.eval_data)) if path]
    lines += ["", "## Hyper-parameters", "", "| name | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in hyper.items()]
    if metrics:
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4g} |" for k, v in metrics.items() if isinstance(v, float)]
    return "\n".join(lines) + "\n"


class PushError(RuntimeError):
    """Uploading to the Hugging Face hub failed; the message says why and what to do."""


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload ``folder`` to the hub repo ``repo_id``; returns its URL. Offline, or without a
    token, fails with one clear line (the local folder is untouched)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise PushError(f"push_to_hub={repo_id!r}: HF_HUB_OFFLINE is set, so nothing was "
                        f"uploaded; the model is in {folder}. Unset it on a connected machine "
                        f"and run `hf upload {repo_id} {folder}`")
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as err:  # network, auth, permission: all end the same way for the user
        raise PushError(f"push_to_hub={repo_id!r} failed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); the model is in "
                        f"{folder}") from err
    return f"https://huggingface.co/{repo_id}"
