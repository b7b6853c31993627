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
    dtype: str = "auto"  # weights: auto (bf16 frozen base for LoRA under bf16, else fp32) | float32 | bfloat16
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None  # None: all linear layers but the LM head
    reference: str = "auto"  # auto | copy | adapter | none
    gradient_checkpointing: bool = False
    logprob_impl: str = "chunked"  # chunked | plain
    lm_head_chunk_size: int = 256  # rows of (chunk x vocab) fp32 logits live at once
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
    batch_layout: str = "prefix_shared"  # prefix_shared | packed | padded (the plain twin)
    max_row_tokens: int | None = None  # packed row cap; None: the longest pair or sequence
    segment_attention: bool = True  # packed rows: per-segment attention, not a dense 4-D mask
    # --- loss --------------------------------------------------------------------------------
    loss: str | list[str] = "sigmoid"  # a registered name, or a list to mix (see loss_weights)
    loss_weights: list[float] | None = None
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    nll_weight: float = 1.0  # cpo / orpo
    discopop_tau: float = 0.05
    rdpo_alpha: float = 0.01
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    odpo_alpha: float = 1.0  # offset = odpo_alpha * log(1 + score_chosen - score_rejected)
    f_divergence: str = "reverse_kl"  # reverse_kl | forward_kl | js | alpha
    f_alpha: float = 0.5
    wpo: bool = False  # weight pairs by their probability under the policy (WPO)
    ld_alpha: float | None = None  # LD-DPO: weight of tokens past the shorter completion
    ref_sync_every: int | None = None  # TR-DPO: update the reference every N steps
    ref_sync_alpha: float = 1.0  # TR-DPO: 1.0 = hard copy, < 1 = soft (EMA) update
    precompute_ref_logps: bool = True
    ref_precision: str = "auto"  # auto (= mixed_precision) | fp32 | bf16: the reference forward
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
    shuffle: bool = True  # False: pairs in file order (benchmarks, curricula)
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
            "dtype": ("auto", "float32", "bfloat16"), "reference": ("auto", "copy", "adapter", "none"),
            "logprob_impl": ("chunked", "plain"), "on_bad_rows": ("error", "skip"),
            "lr_scheduler": ("linear", "cosine", "constant"), "mixed_precision": ("no", "bf16"),
            "f_divergence": ("reverse_kl", "forward_kl", "js", "alpha"),
            "batch_layout": ("prefix_shared", "packed", "padded"),
            "ref_precision": ("auto", "fp32", "bf16"),
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
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ConfigError(f"ld_alpha must be in [0, 1], got {self.ld_alpha}")
        if self.ref_sync_every is not None:
            if self.ref_sync_every < 1 or not 0.0 < self.ref_sync_alpha <= 1.0:
                raise ConfigError("ref_sync_every must be >= 1 and ref_sync_alpha in (0, 1]")
            if self.lora or self.reference == "adapter":
                raise ConfigError("TR-DPO reference syncing needs a separate reference copy: "
                                  "use lora=false (reference=copy)")
            if self.precompute_ref_logps:
                raise ConfigError("TR-DPO changes the reference during training: set "
                                  "precompute_ref_logps=false")
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
            item = (typing.get_args(option) or (object,))[0]
            if item is float:
                return [_coerce_float(v, name, where) for v in value]
            return value
        if origin is list and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    raise ConfigError(f"{where}: {name}={value!r} is not a {hint}")


def _coerce_float(value: Any, name: str, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} holds {value!r}, not a number") from None


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
