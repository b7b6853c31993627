"""From a :class:`TrainConfig` to a ready :class:`Trainer` for a Hugging Face causal LM: the
application glue the CLI and users share (DPO and its family with ``build_run``, SFT with
``build_sft_run``). Generic code never imports this module.

    >>> run = build_run(load_config("recipes/quickstart.yaml"))   # doctest: +SKIP
    >>> run.trainer.train(); run.trainer.save_final()              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import TrainConfig
from .data import (
    ExampleSet,
    PairCollator,
    SequenceCollator,
    TokenizeSettings,
    build_pairs,
    build_sequences,
    build_unpaired,
    load_records,
)
from .data.io import DataError, Record, count_jsonl_rows, jsonl_shards, stream_jsonl
from .data.report import DataReport
from .data.split import split_by_prompt
from .losses import param_values
from .objectives import PreferenceObjective, SFTObjective
from .policies.causal_lm import CausalLMPolicy
from .policies.causal_lm.lora import (
    adapter_base,
    add_reference_copy,
    apply_lora,
    load_adapter,
    quantization_config,
)
from .policies.causal_lm.models import disable_dropout, load_causal_lm, load_tokenizer
from .train import EvalSet, StaticSource, StreamingSource, Trainer
from .train.hardware import DTYPES, check_device_supports
from .train.hardware import resolve as resolve_hardware


@dataclass
class Run:
    cfg: TrainConfig
    tokenizer: Any
    policy: CausalLMPolicy
    objective: Any
    train_data: ExampleSet
    eval_data: ExampleSet | None
    trainer: Trainer

    @property
    def train_pairs(self) -> ExampleSet:  # the preference name of ``train_data``
        return self.train_data

    @property
    def eval_pairs(self) -> ExampleSet | None:
        return self.eval_data


def build_objective(cfg: TrainConfig) -> PreferenceObjective:
    loss = cfg.loss
    return PreferenceObjective.from_names(
        loss.name, loss.loss_weights, param_values(dataclasses.asdict(loss)),
        f_divergence=loss.f_divergence, f_alpha=loss.f_alpha, wpo=loss.wpo)


def resolve_reference(cfg: TrainConfig, needs_reference: bool | None = None) -> str:
    """The reference kind a run gets: what ``model.reference`` says, or for ``auto`` none
    (reference-free losses), adapter_copy (a starting adapter), adapter (LoRA) or copy."""
    needs = build_objective(cfg).needs_reference if needs_reference is None else needs_reference
    if cfg.model.reference != "auto":
        if needs and cfg.model.reference == "none":
            raise ValueError(f"loss {cfg.loss.name!r} needs a reference model; reference=none "
                             f"refused")
        return cfg.model.reference
    if not needs:
        return "none"
    if _starting_adapter(cfg):
        return "adapter_copy"
    return "adapter" if cfg.model.lora else "copy"


def _starting_adapter(cfg: TrainConfig) -> str | None:
    """The adapter a run starts from: ``model.adapter``, or ``model.name`` when it is an
    adapter folder (the output of ``dpokit sft`` with LoRA)."""
    if cfg.model.adapter:
        return cfg.model.adapter
    return cfg.model.name if adapter_base(cfg.model.name) else None


@dataclass
class Rows:
    """Rows read from a source, and the rows the reader skipped (invalid JSON, with
    ``on_bad_rows: skip``), to be counted in the data report."""

    records: list[Record]
    skipped: list[DataError] = field(default_factory=list)


def _read(cfg: TrainConfig, source: str, split: str) -> Rows:
    skipped: list[DataError] | None = [] if cfg.data.on_bad_rows == "skip" else None
    return Rows(load_records(source, split, skipped), skipped or [])


def split_records(cfg: TrainConfig) -> tuple[Rows, Rows | None]:
    """Train and eval rows: ``eval_data``, or ``eval_fraction`` held out from train."""
    if not cfg.data.train_data:
        raise DataError("config", None, "train_data", "not set: name a file of training rows "
                        "(train_data=PATH)")
    train = _read(cfg, cfg.data.train_data, cfg.data.train_split)
    if cfg.data.eval_data:
        return train, _read(cfg, cfg.data.eval_data, cfg.data.eval_split)
    if cfg.data.eval_fraction > 0:  # by prompt: no prompt in both splits
        split = split_by_prompt(train.records, cfg.data.eval_fraction, cfg.optim.seed)
        return Rows(split.train, train.skipped), Rows(split.eval)
    return train, None


def _settings(cfg: TrainConfig, extra_columns: tuple[str, ...] = ()) -> TokenizeSettings:
    d = cfg.data
    return TokenizeSettings(max_length=d.max_length, max_prompt_length=d.max_prompt_length,
                            chat_template_for_strings=d.chat_template_for_strings,
                            extra_columns=extra_columns, offset_alpha=cfg.loss.odpo_alpha)


def _tokenize_both(cfg: TrainConfig, build: Callable, log: Callable[[str], None]):
    train_records, eval_records = split_records(cfg)
    train = build(train_records)
    log(f"train data {cfg.data.train_data}: {train.report.summary()}")
    for example in train.report.first_skipped:
        log(f"  skipped: {example}")
    evaluation = None
    if eval_records:
        evaluation = build(eval_records)
        log(f"eval data {cfg.data.eval_data or 'held out from train'}: "
            f"{evaluation.report.summary()}")
    return train, evaluation


Splits = tuple[ExampleSet, ExampleSet | None]


def load_pairs(cfg: TrainConfig, tokenizer, log=print,
               objective: PreferenceObjective | None = None) -> Splits:
    objective = objective or build_objective(cfg)
    settings = _settings(cfg, objective.extra_columns)
    build = build_unpaired if objective.unpaired else build_pairs
    return _tokenize_both(cfg, lambda rows: build(rows.records, tokenizer, settings,
                                                  cfg.data.on_bad_rows, rows.skipped), log)


def load_sequences(cfg: TrainConfig, tokenizer, log=print) -> Splits:
    settings = _settings(cfg)
    return _tokenize_both(cfg, lambda rows: build_sequences(
        rows.records, tokenizer, settings, cfg.data.on_bad_rows, cfg.data.completion_only_loss,
        rows.skipped), log)


def training_precision(cfg: TrainConfig) -> str:
    """fp32, bf16 or fp16: ``mixed_precision`` with ``auto`` resolved on this machine."""
    return resolve_hardware(cfg.optim.mixed_precision, cfg.run.device).precision


def model_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype weights load in. LoRA under bf16 / fp16 autocast (``dtype: auto``): the frozen
    base is only ever read in that dtype, so keep it so (half the weight memory, no per-step
    casts); trained weights stay fp32."""
    m = cfg.model
    if m.dtype != "auto":
        return getattr(torch, m.dtype)
    precision = training_precision(cfg)
    return DTYPES[precision] if m.lora and precision != "fp32" else torch.float32


def base_model_name(cfg: TrainConfig) -> str:
    """The model weights load from: ``model.name``, or the base an adapter folder names."""
    adapter = _starting_adapter(cfg)
    return adapter_base(cfg.model.name) or cfg.model.name if adapter == cfg.model.name \
        else cfg.model.name


def finish_model(cfg: TrainConfig, model, reference: str, target_modules=None):
    """What every modality does to a loaded model: the starting adapter or a new LoRA one
    (``target_modules``: the config's, unless the modality narrows them), the frozen reference
    adapter, dropout off, gradient checkpointing."""
    m = cfg.model
    adapter = _starting_adapter(cfg)
    model.config.use_cache = False
    if adapter:
        if not m.lora:
            raise ValueError(f"{adapter} is a LoRA adapter: train it with lora=true")
        model = load_adapter(model, adapter, with_reference=reference == "adapter_copy")
    elif m.lora:
        torch.manual_seed(cfg.optim.seed)  # LoRA's initialization draws from the global generator
        model = apply_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout,
                           target_modules or m.lora_target_modules, m.use_dora, m.use_rslora,
                           m.modules_to_save)
        if reference == "adapter_copy":  # a frozen copy of the fresh adapter (iterative DPO)
            model = add_reference_copy(model)
    if m.lora and m.modules_to_save and training_precision(cfg) != "fp32":
        # trained weights stay fp32 under autocast (modules_to_save copies a bf16 base's dtype)
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    if m.disable_dropout:
        disable_dropout(model)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_policy(cfg: TrainConfig, tokenizer=None, needs_reference: bool | None = None,
                 pairs: bool = True) -> CausalLMPolicy:
    m = cfg.model
    device = resolve_hardware(cfg.optim.mixed_precision, cfg.run.device).device.kind
    check_device_supports(device, strategy=cfg.distributed.strategy, quantization=m.quantization)
    base_name = base_model_name(cfg)
    tokenizer = tokenizer or load_tokenizer(m.tokenizer or base_name)
    reference = resolve_reference(cfg, needs_reference)
    quantized = m.quantization == "4bit"
    # QLoRA computes in the training precision's half dtype (fp16 on a GPU without bf16)
    half = torch.float16 if training_precision(cfg) == "fp16" else torch.bfloat16
    model = load_causal_lm(base_name, dtype=half if quantized else model_dtype(cfg),
                           quantization_config=quantization_config(half) if quantized else None)
    if quantized:  # QLoRA: norms in fp32, input gradients for checkpointing through 4-bit
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=m.gradient_checkpointing)
    attention = getattr(model.config, "_attn_implementation", "sdpa")
    if cfg.data.batch_layout != "padded" and attention not in ("sdpa", "eager"):
        raise ValueError(f"batch_layout={cfg.data.batch_layout!r} needs a 4-D attention mask, "
                         f"which attn_implementation={attention!r} does not take; use "
                         f"batch_layout=padded")
    model = finish_model(cfg, model, reference)
    return CausalLMPolicy(model, tokenizer, reference=reference, logprob_impl=m.logprob_impl,
                          chunk_size=m.lm_head_chunk_size,
                          ld_alpha=cfg.loss.ld_alpha if pairs else None,
                          attention_impl=m.attention_impl, merge_on_save=m.merge_adapter,
                          activation_offloading=m.activation_offloading)


def _sources(cfg: TrainConfig, train: ExampleSet, evaluation: ExampleSet | None, collate):
    o = cfg.optim
    source = StaticSource(
        train,
        collate,
        o.batch_size,
        o.grad_accum_steps,
        o.seed,
        cfg.data.shuffle,
        train.fingerprint(),
        collate.key,
    )
    eval_set = None
    if evaluation is not None:
        eval_set = EvalSet(
            evaluation, collate, cfg.run.eval_batch_size, evaluation.fingerprint(), collate.key
        )
    return source, eval_set


def _services(cfg: TrainConfig, tokenizer, log=print) -> dict[str, list]:
    """The trainer's optional services from the config: ``evaluators`` (held-out generation
    figures when ``run.eval_prompts`` is set, embedding geometry when ``geometry.probes`` is)
    and ``regularizers`` (``geometry.regularizer``)."""
    from .eval.evaluate import generation_evaluator
    from .eval.tdi import GeometryMonitor, GeometrySettings, StyleRegularizer, load_probes

    g = cfg.geometry
    settings = GeometrySettings(layer=g.layer, sigma=g.tdi_sigma,
                                max_length=g.max_probe_length, seed=cfg.optim.seed)
    evaluators, regularizers = [], []
    generation = generation_evaluator(cfg)
    if generation is not None:
        evaluators.append(generation)
    if g.probes:
        evaluators.append(GeometryMonitor(load_probes(g.probes), tokenizer, settings,
                                          g.warn_increase, log))
    if g.regularizer != "off":
        regularizers.append(StyleRegularizer(load_probes(g.regularizer_probes), tokenizer,
                                             g.regularizer, g.regularizer_weight,
                                             g.regularizer_contents, settings))
    return {"evaluators": evaluators, "regularizers": regularizers}


def streaming_source(cfg: TrainConfig, tokenizer, objective: PreferenceObjective,
                     collate) -> StreamingSource:
    """``data.streaming``: pairs read lazily from JSON Lines shards, each tokenized when its
    step comes (with ``on_bad_rows: skip``, a bad row is skipped and counted by reason)."""
    if objective.unpaired:
        raise ValueError("streaming reads paired rows; unpaired (KTO) data: streaming=false")
    files = jsonl_shards(cfg.data.train_data)
    settings = _settings(cfg, objective.extra_columns)

    def build(row, position: int):
        if isinstance(row, DataError):  # a line that is not a JSON object
            raise row
        pair = build_pairs([row], tokenizer, settings, "error")[0]
        return dataclasses.replace(pair, index=position)

    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    o = cfg.optim
    return StreamingSource(lambda: stream_jsonl(files), count_jsonl_rows(files), build, collate,
                           o.batch_size, o.grad_accum_steps, o.seed, cfg.data.shuffle_buffer,
                           digest.hexdigest(), collate.key, cfg.data.on_bad_rows == "skip")


def _vision_language(cfg: TrainConfig) -> bool:
    """Whether the run's model is an image-text-to-text model (its config says so)."""
    from .policies.vision_language.models import is_vision_language

    name = base_model_name(cfg)
    return name != "smollm2" and is_vision_language(name)


def build_run(cfg: TrainConfig, log=print) -> Run:
    """A preference run (DPO and its family, KTO on unpaired rows); an image-text model's
    run is :func:`dpokit.vision_language.build_vision_run`."""
    if _vision_language(cfg):
        from .vision_language import build_vision_run

        return build_vision_run(cfg, log)
    torch.manual_seed(cfg.optim.seed)
    objective = build_objective(cfg)
    tokenizer = load_tokenizer(
        cfg.model.tokenizer or adapter_base(cfg.model.name) or cfg.model.name
    )
    collate = PairCollator(tokenizer.pad_token_id, cfg.data.batch_layout, cfg.data.max_row_tokens)
    if cfg.data.streaming:
        train = ExampleSet([], DataReport())  # nothing held: rows come per step
        evaluation, eval_set = None, None
        if cfg.data.eval_data:  # held-out pairs are few: read and tokenized up front
            evaluation = build_pairs(load_records(cfg.data.eval_data, cfg.data.eval_split),
                                     tokenizer, _settings(cfg, objective.extra_columns),
                                     cfg.data.on_bad_rows)
            eval_set = EvalSet(evaluation, collate, cfg.run.eval_batch_size,
                               evaluation.fingerprint(), collate.key)
        source = streaming_source(cfg, tokenizer, objective, collate)
        log(f"train data {cfg.data.train_data}: {source.num_rows} rows, streamed")
        policy = build_policy(cfg, tokenizer, objective.needs_reference)
        trainer = Trainer(cfg, policy, objective, source, eval_set, log=log,
                          **_services(cfg, tokenizer, log))
        return Run(cfg, tokenizer, policy, objective, train, evaluation, trainer)
    train, evaluation = load_pairs(cfg, tokenizer, log, objective)
    policy = build_policy(cfg, tokenizer, objective.needs_reference)
    source, eval_set = _sources(cfg, train, evaluation, collate)
    trainer = Trainer(cfg, policy, objective, source, eval_set, log=log,
                      **_services(cfg, tokenizer, log))
    return Run(cfg, tokenizer, policy, objective, train, evaluation, trainer)


def build_sft_run(cfg: TrainConfig, log=print) -> Run:
    """A supervised fine-tuning run (completion-only NLL, packed without padding)."""
    if _vision_language(cfg):
        from .vision_language import build_vision_sft_run

        return build_vision_sft_run(cfg, log)
    torch.manual_seed(cfg.optim.seed)
    objective = SFTObjective()
    tokenizer = load_tokenizer(
        cfg.model.tokenizer or adapter_base(cfg.model.name) or cfg.model.name
    )
    train, evaluation = load_sequences(cfg, tokenizer, log)
    policy = build_policy(cfg, tokenizer, needs_reference=False, pairs=False)
    collate = SequenceCollator(
        tokenizer.pad_token_id, cfg.data.batch_layout, cfg.data.max_row_tokens
    )
    source, eval_set = _sources(cfg, train, evaluation, collate)
    trainer = Trainer(cfg, policy, objective, source, eval_set, log=log,
                      **_services(cfg, tokenizer, log))
    return Run(cfg, tokenizer, policy, objective, train, evaluation, trainer)
