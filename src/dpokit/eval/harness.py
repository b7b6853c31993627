"""A bridge to EleutherAI's lm-evaluation-harness (``pip install lm-eval``), imported lazily.

``run_harness`` scores a dpokit model (a folder, a hub name, the embedded ``smollm2``, or a
LoRA adapter folder: its base is loaded and the adapter merged) on harness tasks: the
harness's own task names, and tasks from local YAML files (``task_files``: files or folders).
In a local YAML, ``dataset_kwargs.data_files`` paths are relative to the YAML file, so a task
folder can be moved or shipped (``data/lm_eval_tasks/``: a log-likelihood task and a
rule-checked generation task). Nothing is downloaded: local tasks read local files.

    >>> result = run_harness("outputs/run/final",                      # doctest: +SKIP
    ...                      task_files=["data/lm_eval_tasks"])
    >>> result.metrics["dpokit_sentiment"]["acc,none"]                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class HarnessResult:
    """metrics: task -> {"metric,filter": value} as the harness reports them (standard
    errors under "metric_stderr,filter"); samples: task -> logged samples (when asked)."""

    metrics: dict[str, dict[str, Any]]
    samples: dict[str, list[dict]] = field(default_factory=dict)

    def table(self) -> str:
        lines = []
        for task, figures in sorted(self.metrics.items()):
            for key, value in sorted(figures.items()):
                if not isinstance(value, int | float) or "_stderr" in key or "," not in key:
                    continue
                metric = key.split(",")[0]
                se = figures.get(key.replace(metric, f"{metric}_stderr", 1))
                se_text = f" ± {se:.4f}" if isinstance(se, int | float) else ""
                lines.append(f"{task:<24} {key:<28} {value:.4f}{se_text}")
        return "\n".join(lines)


def _resolve_files(config: dict, folder: Path) -> dict:
    files = config.get("dataset_kwargs", {}).get("data_files")
    if files is None:
        return config

    def resolve(path: str) -> str:
        p = Path(path)
        return str(p if p.is_absolute() else (folder / p).resolve())

    resolved = ({k: resolve(v) if isinstance(v, str) else [resolve(x) for x in v]
                 for k, v in files.items()} if isinstance(files, dict)
                else resolve(files) if isinstance(files, str) else [resolve(x) for x in files])
    return {**config, "dataset_kwargs": {**config["dataset_kwargs"], "data_files": resolved}}


def local_task_configs(paths: Sequence[str | Path]) -> list[dict]:
    """Task configs from YAML files or folders of them, data files resolved against each
    YAML's folder. A YAML with the harness's custom tags (``!function``) cannot be read here:
    name its folder with ``include_path`` instead (its paths then resolve from the cwd)."""
    configs = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such task file or folder")
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"{path}: no task YAML files")
        for file in files:
            try:
                config = yaml.safe_load(file.read_text())
            except yaml.constructor.ConstructorError as err:
                raise ValueError(f"{file}: uses a harness YAML tag ({err.problem}); pass its "
                                 f"folder as include_path instead") from err
            if not isinstance(config, dict) or "task" not in config:
                raise ValueError(f"{file}: not a harness task (no 'task' key)")
            configs.append(_resolve_files(config, file.parent))
    return configs


def harness_model(model: str, batch_size: int = 8, device: str = "cpu",
                  max_length: int | None = None) -> Any:
    """The harness's ``HFLM`` around a dpokit-loaded model: a LoRA adapter folder is loaded
    on its base and merged (the harness then scores one plain model)."""
    from ..core.packages import need

    need("lm_eval", "harness", "dpokit harness")
    from lm_eval.models.huggingface import HFLM

    from ..policies.causal_lm.lora import adapter_base, load_adapter
    from ..policies.causal_lm.models import load_causal_lm, load_tokenizer

    base = adapter_base(model)
    own_tokenizer = (Path(model) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model if own_tokenizer or not base else base)
    lm = load_causal_lm(base or model)
    if base:
        lm = load_adapter(lm, model, with_reference=False).merge_and_unload()
    lm.eval()
    return HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=batch_size, device=device,
                max_length=max_length)


def run_harness(model: str | Any, tasks: Sequence[str] = (),
                task_files: Sequence[str | Path] = (), include_path: str | None = None,
                limit: int | None = None, batch_size: int = 8, num_fewshot: int | None = None,
                log_samples: bool = False, seed: int = 0) -> HarnessResult:
    """Evaluate ``model`` (a path / name for :func:`harness_model`, or a ready harness LM)
    on harness task names and local task files."""
    from ..core.packages import need

    need("lm_eval", "harness", "dpokit harness")
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_list: list[Any] = [*tasks, *local_task_configs(task_files)]
    if not task_list:
        raise ValueError("no tasks: name harness tasks and/or local task files")
    lm = harness_model(model, batch_size) if isinstance(model, str) else model
    out = lm_eval.simple_evaluate(
        model=lm, tasks=task_list, task_manager=TaskManager(include_path=include_path),
        limit=limit, num_fewshot=num_fewshot, log_samples=log_samples, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    return HarnessResult(out["results"], out.get("samples", {}) if log_samples else {})
