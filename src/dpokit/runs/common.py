"""What every run builder shares: the rows of a run and their split, the sources the loop
reads, the reference a run gets, and what is done to any loaded model (its adapter, LoRA,
dropout, checkpointing). Each function takes the config sections it reads.

    >>> from dpokit.config.schema import ModelConfig
    >>> resolve_reference(ModelConfig(lora=True), needs_reference=True)
    'adapter'
    >>> resolve_reference(ModelConfig(lora=False), needs_reference=False)
    'none'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.schema import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    fields_where,
)
from ..core.hardware import DTYPES, HardwareChoice
from ..core.hardware import resolve as resolve_hardware
from ..core.protocols import Objective, Policy
from ..data.io import DataError, Record, jsonl_shards, load_records, peek_records
from ..data.report import ExampleSet
from ..data.split import split_by_prompt
from ..data.text.pairs import TokenizeSettings
from ..policies.causal_lm.lora import adapter_base, add_reference_copy, apply_lora, load_adapter
from ..policies.causal_lm.models import disable_dropout
from ..train import EvalSet, StaticSource, Trainer
from .loading import tokenizer_source


@dataclass
class Run:
    """A built run: its config, tokenizer (or processor's tokenizer), policy, objective, the
    tokenized train and eval examples (None for online runs) and the ready trainer."""

    cfg: TrainConfig
    tokenizer: Any
    policy: Policy
    objective: Objective
    train_data: ExampleSet | None
    eval_data: ExampleSet | None
    trainer: Trainer

    @property
    def train_pairs(self) -> ExampleSet | None:  # the preference name of ``train_data``
        return self.train_data

    @property
    def eval_pairs(self) -> ExampleSet | None:
        return self.eval_data


def check_named_files(cfg: TrainConfig) -> None:
    """Every file the run's config names (its ``path=True`` fields: train and held-out data,
    held-out prompts, online prompts, geometry probes) opened and its first row parsed,
    before any tokenizer or weights load: a typo is named in seconds, not after minutes of
    loading. Each reader checks the rows' content later, still before the model.

    >>> from dpokit.config import load_config
    >>> check_named_files(load_config(None, ["eval_prompts=nowhere.jsonl"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpokit.data.io.DataError: nowhere.jsonl: file not found
    """
    for section, name in fields_where("path"):
        source = getattr(getattr(cfg, section), name)
        if not source:
            continue
        if (section, name) == ("data", "train_data") and cfg.data.streaming:
            peek_records(str(jsonl_shards(source)[0]))
            continue
        split = cfg.data.eval_split if (section, name) == ("data", "eval_data") \
            else cfg.data.train_split
        peek_records(source, split)


def hardware(cfg: TrainConfig) -> HardwareChoice:
    """The run's device and precision (``optim.mixed_precision``'s auto resolved here), and
    whether freed host memory stays in the heap (``run.host_memory``); the trainer takes it
    from the builder (:func:`~dpokit.train.setup.build_parts`), it does not resolve again."""
    return resolve_hardware(cfg.optim.mixed_precision, cfg.run.device, cfg.run.host_memory)


def sampo_seed(loss: LossConfig, seed: int) -> int | None:
    """The seed SamPO draws its kept tokens from (the run's seed), or None when it is off."""
    return seed if loss.sampo else None


def resolve_reference(m: ModelConfig, needs_reference: bool, loss_name: str = "") -> str:
    """The reference kind a run gets: what ``model.reference`` says, or for ``auto`` none
    (reference-free losses), adapter_copy (a starting adapter), adapter (LoRA) or copy."""
    if m.reference != "auto":
        if needs_reference and m.reference == "none":
            raise ValueError(f"loss {loss_name!r} needs a reference model; reference=none "
                             f"refused")
        return m.reference
    if not needs_reference:
        return "none"
    if starting_adapter(m):
        return "adapter_copy"
    return "adapter" if m.lora else "copy"


def starting_adapter(m: ModelConfig) -> str | None:
    """The adapter a run starts from: ``model.adapter``, or ``model.name`` when it is an
    adapter folder (the output of ``dpokit sft`` with LoRA)."""
    if m.adapter:
        return m.adapter
    return m.name if adapter_base(m.name) else None


def base_model_name(m: ModelConfig) -> str:
    """The model weights load from: ``model.name``, or the base an adapter folder names."""
    if starting_adapter(m) == m.name:
        return adapter_base(m.name) or m.name
    return m.name


def tokenizer_name(m: ModelConfig) -> str:
    """The run's tokenizer (:func:`~dpokit.runs.loading.tokenizer_source`'s rule)."""
    return tokenizer_source(m.name, m.tokenizer)


def model_dtype(m: ModelConfig, precision: str) -> torch.dtype:
    """The dtype weights load in. LoRA under bf16 / fp16 autocast (``dtype: auto``): the frozen
    base is only ever read in that dtype, so keep it so (half the weight memory, no per-step
    casts); trained weights stay fp32."""
    if m.dtype != "auto":
        return getattr(torch, m.dtype)
    return DTYPES[precision] if m.lora and precision != "fp32" else torch.float32


def finish_model(m: ModelConfig, model, reference: str, precision: str, seed: int,
                 target_modules=None):
    """What every modality does to a loaded model: the starting adapter or a new LoRA one
    (``target_modules``: the config's, unless the modality narrows them), the frozen reference
    adapter, dropout off, gradient checkpointing."""
    adapter = starting_adapter(m)
    model.config.use_cache = False
    if adapter:
        if not m.lora:
            raise ValueError(f"{adapter} is a LoRA adapter: train it with lora=true")
        model = load_adapter(model, adapter, with_reference=reference == "adapter_copy")
    elif m.lora:
        torch.manual_seed(seed)  # LoRA's initialization draws from the global generator
        model = apply_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout,
                           target_modules or m.lora_target_modules, m.use_dora, m.use_rslora,
                           m.modules_to_save)
        if reference == "adapter_copy":  # a frozen copy of the fresh adapter (iterative DPO)
            model = add_reference_copy(model)
    if m.lora and m.modules_to_save and precision != "fp32":
        # trained weights stay fp32 under autocast (modules_to_save copies a bf16 base's dtype)
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    if m.disable_dropout:
        disable_dropout(model)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


@dataclass
class Rows:
    """Rows read from a source, and the rows the reader skipped (invalid JSON, with
    ``on_bad_rows: skip``), to be counted in the data report."""

    records: list[Record]
    skipped: list[DataError] = field(default_factory=list)


def read_rows(d: DataConfig, source: str, split: str) -> Rows:
    skipped: list[DataError] | None = [] if d.on_bad_rows == "skip" else None
    return Rows(load_records(source, split, skipped), skipped or [])


@dataclass
class SplitRows:
    train: Rows
    eval: Rows | None


def split_records(d: DataConfig, seed: int) -> SplitRows:
    """Train and eval rows: ``eval_data``, or ``eval_fraction`` held out from train by prompt
    (``seed``: the split's)."""
    if not d.train_data:
        raise DataError("config", None, "train_data", "not set: name a file of training rows "
                        "(train_data=PATH)")
    train = read_rows(d, d.train_data, d.train_split)
    if d.eval_data:
        return SplitRows(train, read_rows(d, d.eval_data, d.eval_split))
    if d.eval_fraction > 0:  # by prompt: no prompt in both splits
        split = split_by_prompt(train.records, d.eval_fraction, seed)
        return SplitRows(Rows(split.train, train.skipped), Rows(split.eval))
    return SplitRows(train, None)


def tokenize_settings(d: DataConfig, loss: LossConfig | None = None,
                      extra_columns: tuple[str, ...] = ()) -> TokenizeSettings:
    """How text rows are cut and rendered (``loss``: ODPO's offset scale, for pairs)."""
    return TokenizeSettings(max_length=d.max_length, max_prompt_length=d.max_prompt_length,
                            chat_template_for_strings=d.chat_template_for_strings,
                            extra_columns=extra_columns,
                            offset_alpha=loss.odpo_alpha if loss is not None else 1.0)


@dataclass
class Examples:
    """The tokenized train examples and the held-out ones (None without eval data)."""

    train: ExampleSet
    eval: ExampleSet | None


def tokenize_both(d: DataConfig, seed: int, build: Callable[[Rows], ExampleSet],
                  log: Callable[[str], None]) -> Examples:
    """Read, split and build both sides, logging each side's data report."""
    rows = split_records(d, seed)
    train = build(rows.train)
    log(f"train data {d.train_data}: {train.report.summary()}")
    for example in train.report.first_skipped:
        log(f"  skipped: {example}")
    evaluation = None
    if rows.eval:
        evaluation = build(rows.eval)
        log(f"eval data {d.eval_data or 'held out from train'}: {evaluation.report.summary()}")
    return Examples(train, evaluation)


@dataclass
class Sources:
    train: StaticSource
    eval: EvalSet | None


def sources(o: OptimConfig, d: DataConfig, r: RunConfig, examples: Examples, collate,
            kind: type[StaticSource] = StaticSource) -> Sources:
    """The loop's training source (seeded order, resumable by step; ``kind``: a
    :class:`StaticSource` subclass, e.g. one drawing noise per step) and held-out set."""
    train, evaluation = examples.train, examples.eval
    source = kind(train, collate, o.batch_size, o.grad_accum_steps, o.seed, d.shuffle,
                  train.fingerprint(), collate.key)
    eval_set = None
    if evaluation is not None:
        eval_set = EvalSet(evaluation, collate, r.eval_batch_size, evaluation.fingerprint(),
                           collate.key)
    return Sources(source, eval_set)
