"""The training configuration: one flat, typed dataclass, the single source of truth.

YAML recipes and ``key=value`` overrides only set its fields; an unknown key is an error that
suggests the nearest field name.

    >>> cfg = load_config(None, ["loss=ipo", "beta=0.5"])
    >>> cfg.loss, cfg.beta
    ('ipo', 0.5)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit :class:`TrainConfig`."""


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------
    model: str = "smollm2"  # local folder, hub name, or the embedded default "smollm2"
    tokenizer: str | None = None  # defaults to `model`
    dtype: str = "float32"  # weights: float32 | bfloat16
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None  # None: all linear layers but the LM head
    reference: str = "auto"  # auto | copy | adapter | none
    gradient_checkpointing: bool = False
    logprob_impl: str = "chunked"  # chunked | plain
    lm_head_chunk_size: int = 1024
    # --- data --------------------------------------------------------------------------------
    train_data: str = "data/sentiment_pairs.train.jsonl"
    eval_data: str | None = "data/sentiment_pairs.eval.jsonl"
    train_split: str = "train"
    eval_split: str = "test"
    eval_fraction: float = 0.0  # hold out this fraction of train_data when eval_data is None
    max_length: int = 512
    max_prompt_length: int = 256
    chat_template_for_strings: bool = False
    on_bad_rows: str = "error"  # error | skip
    # --- loss --------------------------------------------------------------------------------
    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    precompute_ref_logps: bool = True
    ref_cache_dir: str | None = None  # default: <cache root>/ref_logps
    # --- optimization ------------------------------------------------------------------------
    learning_rate: float = 5e-6
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_scheduler: str = "linear"  # linear | cosine | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    num_epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4  # pairs per micro-batch (per process)
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # no | bf16 (autocast; the loss math stays fp32)
    seed: int = 0
    # --- evaluation, logging, checkpoints ----------------------------------------------------
    eval_every: int | None = None  # steps; None: only at the end
    eval_batch_size: int = 8
    log_every: int = 1
    output_dir: str = "outputs/run"
    save_every: int | None = None  # steps; None: no intermediate checkpoints
    keep_checkpoints: int = 2
    resume: bool = False  # resume from the latest checkpoint in output_dir
    tensorboard: bool = True  # when the tensorboard package is installed
    progress_bar: bool = True

    def validate(self) -> None:
        choices = {
            "dtype": ("float32", "bfloat16"), "reference": ("auto", "copy", "adapter", "none"),
            "logprob_impl": ("chunked", "plain"), "on_bad_rows": ("error", "skip"),
            "lr_scheduler": ("linear", "cosine", "constant"), "mixed_precision": ("no", "bf16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be one of {allowed}")
        for name in ("batch_size", "grad_accum_steps", "max_length", "max_prompt_length",
                     "lm_head_chunk_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reference == "adapter" and not self.lora:
            raise ConfigError("reference='adapter' needs lora=true; use reference='copy'")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _unknown(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, _FIELDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are."""
    hint = _HINTS[name]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: {name} may not be null")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):  # YAML 1.1 reads "5e-6" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is bool and isinstance(value, bool):
            return value
        if origin is str and isinstance(value, str):
            return value
        if origin is list and isinstance(value, list):
            return value
        if origin is list and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    raise ConfigError(f"{where}: {name}={value!r} is not a {hint}")


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None,
                **kwargs: Any) -> TrainConfig:
    """Build a config from a YAML recipe, then ``key=value`` overrides, then keyword args."""
    values: dict[str, Any] = {}
    if recipe is not None:
        try:
            loaded = yaml.safe_load(Path(recipe).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{recipe}: cannot read recipe: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{recipe}: a recipe is a mapping of config keys to values")
        for key, value in loaded.items():
            if key not in _FIELDS:
                raise _unknown(key, str(recipe))
            values[key] = _coerce(key, value, str(recipe))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value")
        key = key.strip()
        if key not in _FIELDS:
            raise _unknown(key, "command line")
        values[key] = _coerce(key, yaml.safe_load(raw) if raw.strip() else None, "command line")
    for key, value in kwargs.items():
        if key not in _FIELDS:
            raise _unknown(key, "keyword argument")
        values[key] = _coerce(key, value, "keyword argument")
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
