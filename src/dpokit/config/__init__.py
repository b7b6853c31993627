"""Load a :class:`TrainConfig` from a YAML recipe, ``key=value`` overrides and keyword
arguments. Keys are flat (``beta=0.5``) or dotted (``loss.beta=0.5``); a recipe may nest
sections (``loss: {name: ipo, beta: 0.5}``) or stay flat. ``model: NAME`` and ``loss: NAME``
set the section's ``name``. An unknown key is an error naming the nearest field.

    >>> cfg = load_config(None, ["loss=ipo", "loss.beta=0.5", "max_steps=3"])
    >>> cfg.loss.name, cfg.loss.beta, cfg.optim.max_steps
    ('ipo', 0.5, 3)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..core.hardware import HardwareError, check_device_supports
from ..losses import available_losses
from .schema import SECTIONS, TrainConfig, fields_where


class ConfigError(ValueError):
    """A recipe or override that does not fit :class:`TrainConfig`."""


# field name -> (section, dataclasses.Field); every field name is unique across sections,
# except each section's `name`, which is set as `model=...` / `loss=...` or dotted
_FIELDS = {s: {f.name: f for f in dataclasses.fields(c)} for s, c in SECTIONS.items()}
_FLAT: dict[str, tuple[str, dataclasses.Field]] = {}
for _section, _cls in SECTIONS.items():
    for _f in dataclasses.fields(_cls):
        if _f.name == "name":
            continue
        if _f.name in _FLAT:
            raise RuntimeError(f"config field {_f.name!r} is in two sections")
        _FLAT[_f.name] = (_section, _f)
_HINTS = {s: typing.get_type_hints(c) for s, c in SECTIONS.items()}
_DEFAULTS = {s: dataclasses.asdict(c()) for s, c in SECTIONS.items()}
_ALL_KEYS = list(_FLAT) + [f"{s}.{n}" for s in _FIELDS for n in _FIELDS[s]] + list(SECTIONS)


def _resolve(key: str, value: Any, where: str) -> tuple[str, str]:
    """(section, field) for a flat, dotted or section-named key."""
    if "." in key:
        section, _, name = key.partition(".")
        if name in _FIELDS.get(section, {}):
            return section, name
    elif key in SECTIONS and not isinstance(value, dict):
        return key, "name"  # `model: smollm2`, `loss: ipo`
    elif key in _FLAT:
        return _FLAT[key][0], key
    raise unknown_key(key, _ALL_KEYS, where)


def unknown_key(key: Any, allowed: list[str], where: str) -> ConfigError:
    """The error of a key that is not allowed, naming the nearest allowed one."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


# YAML 1.1 reads these words as booleans or null; an enum field gets its word back
_YAML_WORDS = {True: ("yes", "on", "true"), False: ("no", "off", "false"),
               None: ("none", "null", "off", "no")}


def _enum_word(value: Any, allowed: tuple) -> Any:
    """``value`` as one of ``allowed``, where YAML turned the word into a bool or None.

    >>> _enum_word(False, ("auto", "no", "bf16")), _enum_word(None, ("none", "4bit"))
    ('no', 'none')
    """
    if value is None or isinstance(value, bool):
        return next((w for w in _YAML_WORDS[value] if w in allowed), value)
    return value


def _coerce(section: str, name: str, value: Any, where: str) -> Any:
    return _coerce_hint(_HINTS[section][name], name, value, where)


def _coerce_hint(hint: Any, name: str, value: Any, where: str) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        literal = [o for o in options if typing.get_origin(o) is typing.Literal]
        if not literal or _enum_word(None, typing.get_args(literal[0])) is None:
            raise ConfigError(f"{where}: {name} may not be null")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is typing.Literal:
            allowed = typing.get_args(option)
            value = _enum_word(value, allowed)
            if value in allowed:
                return value
            raise ConfigError(f"{where}: {name}={value!r}: must be one of {allowed}")
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


def _set(values: dict[str, dict[str, Any]], key: str, value: Any, where: str) -> None:
    if key in SECTIONS and isinstance(value, dict):
        for inner, v in value.items():
            section, name = _resolve(f"{key}.{inner}", v, where)
            values[section][name] = _coerce(section, name, v, where)
        return
    section, name = _resolve(key, value, where)
    values[section][name] = _coerce(section, name, value, where)


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None,
                **kwargs: Any) -> TrainConfig:
    """Build a config from a YAML recipe, then ``key=value`` overrides, then keyword args."""
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if recipe is not None:
        for key, value in read_recipe(recipe).items():
            _set(values, str(key), value, str(recipe))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value")
        _set(values, key.strip(), yaml.safe_load(raw) if raw.strip() else None, "command line")
    for key, value in kwargs.items():
        _set(values, key, value, "keyword argument")
    cfg = TrainConfig(**{s: cls(**values[s]) for s, cls in SECTIONS.items()})
    cfg = follow_settings(cfg, values)
    validate(cfg)
    return cfg


def follow_settings(cfg: TrainConfig, given: dict[str, dict[str, Any]]) -> TrainConfig:
    """Each unset field declared with ``follows`` (:class:`~dpokit.config.fields.Follows`)
    derived from the field it follows, so that a default the user never set follows what the
    user did set; ``cfg.derived`` says what changed (printed on the run's first line).

    >>> load_config(None, ["max_length=64"]).derived
    ('max_prompt_length=32 (half of max_length=64)',)
    """
    notes = []
    for section in SECTIONS:
        part = getattr(cfg, section)
        changes = {}
        for f in dataclasses.fields(part):
            follows = f.metadata.get("follows")
            if follows is None or f.name in given[section]:
                continue
            source = getattr(part, follows.source)
            value = follows.rule(source)
            if value != getattr(part, f.name):
                changes[f.name] = value
                notes.append(f"{f.name}={value} ({follows.says}={source})")
        if changes:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(part, **changes)})
    return dataclasses.replace(cfg, derived=tuple(notes)) if notes else cfg


def validate(cfg: TrainConfig) -> None:
    """Domains of every numeric field, then combinations that cannot work together."""
    for section in SECTIONS:
        part = getattr(cfg, section)
        for f in dataclasses.fields(part):
            domain, value = f.metadata.get("domain"), getattr(part, f.name)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if domain is not None and numeric:
                problem = domain.check(f.name, float(value))
                if problem:
                    raise ConfigError(problem)
    m, d, loss = cfg.model, cfg.data, cfg.loss
    if m.reference == "adapter" and not m.lora:
        raise ConfigError("reference=adapter needs lora=true; use reference=copy")
    if m.adapter and not m.lora:
        raise ConfigError("adapter= starts LoRA training from an adapter: it needs lora=true")
    if d.max_prompt_length >= d.max_length:
        named = next((n for n in cfg.derived if n.startswith("max_prompt_length=")),
                     f"max_prompt_length={d.max_prompt_length}")  # a derived one says so
        raise ConfigError(
            f"{named} leaves no room for a "
            f"completion in max_length={d.max_length}: set the two so that the prompt's "
            f"budget is the smaller"
        )
    if d.eval_data and d.eval_fraction > 0:
        raise ConfigError(
            "eval_data and eval_fraction both set: hold out a fraction of "
            "train_data, or name an eval file, not both"
        )
    names = [loss.name] if isinstance(loss.name, str) else loss.name
    if loss.loss_weights is not None and len(loss.loss_weights) != len(names):
        raise ConfigError(
            f"loss_weights has {len(loss.loss_weights)} values for {len(names)} losses"
        )
    if loss.ld_alpha is not None or loss.sampo:
        known = available_losses()
        unpaired = [n for n in names if n in known and known[n].unpaired]
        if unpaired:
            raise ConfigError(f"ld_alpha and sampo weigh the tokens of a pair's two answers: "
                              f"{', '.join(unpaired)} trains on unpaired rows")
    if m.quantization != "none" and not m.lora:
        raise ConfigError("quantization=4bit is QLoRA: the frozen base is quantized, so it "
                          "needs lora=true")
    drpo = cfg.drpo
    if drpo.num_positive + drpo.num_negative > drpo.samples_per_prompt:
        raise ConfigError(f"drpo: num_positive + num_negative ({drpo.num_positive} + "
                          f"{drpo.num_negative}) exceed samples_per_prompt="
                          f"{drpo.samples_per_prompt}")
    if min([*drpo.drift_radii, *drpo.reference_radii], default=0) <= 0 or not drpo.drift_radii:
        raise ConfigError("drpo: drift_radii (at least one) and reference_radii are > 0")
    if (m.merge_adapter or m.use_dora or m.use_rslora or m.modules_to_save) and not m.lora:
        raise ConfigError("merge_adapter, use_dora, use_rslora and modules_to_save are LoRA "
                          "options: set lora=true")
    strategy = cfg.distributed.strategy
    if cfg.optim.mixed_precision == "fp16" and strategy != "ddp":
        raise ConfigError(f"mixed_precision=fp16 with distributed.strategy={strategy}: dpokit's "
                          f"loss scaling runs with ddp only; use fp32, or bf16 on bf16 hardware")
    if cfg.run.device == "mps":
        try:
            check_device_supports("mps", strategy=strategy, quantization=m.quantization)
        except HardwareError as err:
            raise ConfigError(str(err)) from None
    if strategy in ("fsdp", "deepspeed"):  # fields declared sharded=False
        outside = [f"{section}.{name}" for section, name in fields_where("unsharded")
                   if getattr(getattr(cfg, section), name)
                   != _DEFAULTS[section][name]]
        if outside:
            raise ConfigError(f"distributed.strategy={strategy}: {', '.join(outside)} run(s) "
                              f"the model outside its sharded forward (generation, hidden "
                              f"states, a merge), which {strategy} does not gather weights for; "
                              f"train with {strategy}, then evaluate or merge final/ (dpokit "
                              f"eval) in one process")
    if d.streaming and d.train_data:
        from ..data.io import DataError, check_jsonl_spec

        try:
            check_jsonl_spec(d.train_data)  # a .csv is named here, before anything loads
        except DataError as err:
            raise ConfigError(str(err)) from None
    if cfg.online.sampler == "vllm" and cfg.run.device in ("cpu", "mps"):
        raise ConfigError(f"online.sampler=vllm runs a vLLM engine on a CUDA GPU; "
                          f"device={cfg.run.device}: use sampler=hf")
    if cfg.online.sampler == "vllm" and m.quantization != "none":
        raise ConfigError("online.sampler=vllm loads the policy's weights into the engine, and "
                          "a 4-bit (QLoRA) base has none to give it: use sampler=hf")
    if d.streaming and d.eval_fraction > 0:
        raise ConfigError("streaming reads train_data lazily and cannot hold out a fraction "
                          "of it: name an eval_data file")
    if cfg.geometry.regularizer != "off" and not cfg.geometry.regularizer_probes:
        raise ConfigError(f"geometry.regularizer={cfg.geometry.regularizer} trains on probe "
                          f"rows: set geometry.regularizer_probes (e.g. "
                          f"data/style_probes.train.jsonl)")
    if cfg.online.mode == "online" and not cfg.optim.max_steps:
        raise ConfigError("online.mode=online samples new pairs every step and has no epochs: "
                          "set optim.max_steps")
    if loss.ref_sync:
        if m.lora or m.reference in ("adapter", "adapter_copy"):
            raise ConfigError(
                "TR-DPO reference syncing needs a separate reference copy: "
                "use lora=false (reference=copy)"
            )
        if loss.precompute_ref_logps:
            raise ConfigError(
                "TR-DPO changes the reference during training: set precompute_ref_logps=false"
            )


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    """A YAML recipe's mapping; a file that cannot be read or is not a mapping: one line."""
    try:
        loaded = yaml.safe_load(Path(recipe).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{recipe}: cannot read recipe: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{recipe}: a recipe is a mapping of config keys to values")
    return loaded


def check_keys(keys: Any, allowed: Any, where: str) -> None:
    """An unknown key is an error naming the nearest allowed one.

    >>> check_keys(["num_itmes"], ["num_items", "dim"], "recommender")
    Traceback (most recent call last):
    dpokit.config.ConfigError: recommender: unknown key 'num_itmes'; did you mean 'num_items'?
    """
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            raise unknown_key(key, allowed, where)


def load_settings(cls: type, values: dict[str, Any], where: str) -> Any:
    """Any settings dataclass from a mapping, checked as the config's sections are: unknown
    keys named with the nearest field, values against the field types, numeric domains."""
    check_keys(values, [f.name for f in dataclasses.fields(cls)], where)
    hints = typing.get_type_hints(cls)
    settings = cls(**{k: _coerce_hint(hints[k], k, v, where) for k, v in values.items()})
    for f in dataclasses.fields(cls):
        domain, value = f.metadata.get("domain"), getattr(settings, f.name)
        if domain is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = domain.check(f.name, float(value))
            if problem:
                raise ConfigError(f"{where}: {problem}")
    return settings


def describe_config() -> str:
    """Every field, section by section, with its default, domain and one-line meaning."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        defaults = cls()
        for f in dataclasses.fields(cls):
            domain = f.metadata.get("domain")
            where = f" in {domain.describe()}" if domain is not None else ""
            hint = _HINTS[section][f.name]
            choices = _choices(hint)
            lines.append(
                f"  {f.name} = {getattr(defaults, f.name)!r}{where}"
                f"{'  ' + choices if choices else ''}"
            )
            lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _choices(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + " | ".join(map(str, typing.get_args(hint)))
    return ""


__all__ = ["ConfigError", "TrainConfig", "check_keys", "describe_config", "load_config",
           "load_settings", "read_recipe", "validate"]
