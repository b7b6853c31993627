"""Runs of a Hugging Face causal LM: preference optimization (DPO and its family, KTO on
unpaired rows) with :func:`build_run`, SFT with :func:`build_sft_run`. The command line
reaches them through :func:`dpokit.runs.builder_for`.

    >>> run = build_run(load_config("recipes/quickstart.yaml"))   # doctest: +SKIP
    >>> run.trainer.train(); run.trainer.save_final()              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import torch

from ..config.schema import (
    DataConfig,
    GeometryConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from ..core.hardware import HardwareChoice, check_device_supports
from ..data.io import DataError, count_jsonl_rows, jsonl_shards, load_records, stream_jsonl
from ..data.report import DataReport, ExampleSet
from ..data.text.collate import PairCollator, SequenceCollator
from ..data.text.pairs import build_pairs, build_unpaired
from ..data.text.sft import build_sequences
from ..objectives import PreferenceObjective, SFTObjective, build_objective
from ..policies.causal_lm import CausalLMPolicy
from ..policies.causal_lm.lora import quantization_config
from ..policies.causal_lm.models import load_causal_lm, load_tokenizer
from ..policies.causal_lm.segments import MODULE as SEGMENTS_MODULE
from ..policies.causal_lm.segments import SegmentSpec, install_segments
from ..train import EvalSet, StreamingSource, make_trainer
from .common import (
    Examples,
    Run,
    base_model_name,
    check_named_files,
    finish_model,
    hardware,
    model_dtype,
    resolve_reference,
    sampo_seed,
    sources,
    starting_adapter,
    tokenize_both,
    tokenize_settings,
    tokenizer_name,
)
from .layouts import LayoutDecision, decide_layout, proved


def load_pairs(d: DataConfig, loss: LossConfig, seed: int, tokenizer, log=print,
               objective: PreferenceObjective | None = None) -> Examples:
    """The data section's preference (or, for KTO, unpaired) rows, tokenized and split
    (``seed``: the held-out split's; ``loss``: the objective, unless given, and ODPO's
    offset scale)."""
    objective = objective or build_objective(loss)
    settings = tokenize_settings(d, loss, objective.extra_columns)
    build = build_unpaired if objective.unpaired else build_pairs
    return tokenize_both(d, seed, lambda rows: build(
        rows.records, tokenizer, settings, d.on_bad_rows, rows.skipped), log)


def load_sequences(d: DataConfig, seed: int, tokenizer, log=print) -> Examples:
    """The run's SFT rows, tokenized and split."""
    settings = tokenize_settings(d)
    return tokenize_both(d, seed, lambda rows: build_sequences(
        rows.records, tokenizer, settings, d.on_bad_rows, d.completion_only_loss,
        rows.skipped), log)


def build_policy(m: ModelConfig, choice: HardwareChoice, reference: str, *, tokenizer=None,
                 ld_alpha: float | None = None, sampo_seed: int | None = None,
                 strategy: str = "none",
                 seed: int = 0) -> CausalLMPolicy:
    """The model section's causal LM, ready to train on ``choice``'s device and precision:
    weights (4-bit for QLoRA), the adapter or LoRA, the ``reference`` kind."""
    check_device_supports(choice.device.kind, strategy=strategy, quantization=m.quantization)
    tokenizer = tokenizer or load_tokenizer(tokenizer_name(m))
    quantized = m.quantization == "4bit"
    # QLoRA computes in the training precision's half dtype (fp16 on a GPU without bf16)
    half = torch.float16 if choice.precision == "fp16" else torch.bfloat16
    model = load_causal_lm(base_model_name(m),
                           dtype=half if quantized else model_dtype(m, choice.precision),
                           attn_implementation=m.attn_implementation,
                           quantization_config=quantization_config(half) if quantized else None)
    if quantized:  # QLoRA: norms in fp32, input gradients for checkpointing through 4-bit
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=m.gradient_checkpointing)
    segments = segment_spec(m)
    if segments is not None:  # before LoRA: the table trains in full, saved with the adapter
        saved_full = starting_adapter(m) is None and SegmentSpec.read(m.name) is not None
        install_segments(model, tokenizer, segments, full_model=m.name if saved_full else None)
        m = dataclasses.replace(m, modules_to_save=[*m.modules_to_save, SEGMENTS_MODULE])
    model = finish_model(m, model, reference, choice.precision, seed)
    return CausalLMPolicy(model, tokenizer, reference=reference, logprob_impl=m.logprob_impl,
                          chunk_size=m.lm_head_chunk_size, ld_alpha=ld_alpha,
                          attention_impl=m.attention_impl, merge_on_save=m.merge_adapter,
                          activation_offloading=m.activation_offloading, sampo_seed=sampo_seed,
                          segments=segments, router_aux_coef=m.router_aux_loss_coef)


def segment_spec(m: ModelConfig) -> SegmentSpec | None:
    """The segment embeddings the run's model has: the configured ones, or those a model or
    adapter folder was saved with (``segments.json``); both must agree."""
    if m.segment_reset_tokens and not m.segment_tokens:
        raise ValueError("model.segment_reset_tokens goes with model.segment_tokens")
    configured = SegmentSpec(tuple(m.segment_tokens), tuple(m.segment_reset_tokens)) \
        if m.segment_tokens else None
    saved = SegmentSpec.read(starting_adapter(m) or m.name)
    if configured and saved and configured != saved:
        raise ValueError(f"model.segment_tokens: {list(configured.markers)} (reset "
                         f"{list(configured.reset)}), but {starting_adapter(m) or m.name} was "
                         f"trained with {list(saved.markers)} (reset {list(saved.reset)})")
    return configured or saved


def policy_for(cfg: TrainConfig, tokenizer=None, needs_reference: bool = True,
               pairs: bool = True) -> CausalLMPolicy:
    """:func:`build_policy` with the run's sections: the reference the loss needs, the
    hardware, LD-DPO's alpha and SamPO's seed for pairs."""
    return build_policy(cfg.model, hardware(cfg),
                        resolve_reference(cfg.model, needs_reference, cfg.loss.name),
                        tokenizer=tokenizer, ld_alpha=cfg.loss.ld_alpha if pairs else None,
                        sampo_seed=sampo_seed(cfg.loss, cfg.optim.seed) if pairs else None,
                        strategy=cfg.distributed.strategy,
                        seed=cfg.optim.seed)


def services(cfg: TrainConfig, tokenizer, log=print) -> dict[str, list]:
    """The trainer's optional services: ``evaluators`` (held-out generation figures when
    ``run.eval_prompts`` is set, embedding geometry when ``geometry.probes`` is) and
    ``regularizers`` (``geometry.regularizer``)."""
    from ..eval.evaluate import generation_evaluator

    generation = generation_evaluator(cfg.run, cfg.online, cfg.optim.seed,
                                      cfg.data.chat_template_for_strings)
    geometry = _geometry(cfg.geometry, cfg.optim.seed, tokenizer, log)
    first = [generation] if generation is not None else []
    return {"evaluators": first + geometry["evaluators"],
            "regularizers": geometry["regularizers"]}


def _geometry(g: GeometryConfig, seed: int, tokenizer, log) -> dict[str, list]:
    from ..eval.style_regularizer import MatchedNoise, StyleRegularizer
    from ..eval.tdi import GeometryMonitor, GeometrySettings, load_probes

    settings = GeometrySettings(layer=g.layer, sigma=g.tdi_sigma, max_length=g.max_probe_length,
                                seed=seed)
    evaluators = [GeometryMonitor(load_probes(g.probes), tokenizer, settings, g.warn_increase,
                                  log)] if g.probes else []
    regularizers = [StyleRegularizer(
        load_probes(g.regularizer_probes), tokenizer, g.regularizer, g.regularizer_weight,
        g.regularizer_contents, settings, cap_ratio=g.regularizer_cap,
        noise=MatchedNoise(g.regularizer_layer, g.regularizer_rank, g.regularizer_shrinkage))
                    ] if g.regularizer != "off" else []
    return {"evaluators": evaluators, "regularizers": regularizers}


def streaming_source(d: DataConfig, o: OptimConfig, loss: LossConfig, tokenizer,
                     objective: PreferenceObjective, collate) -> StreamingSource:
    """``data.streaming``: pairs read lazily from JSON Lines shards, each tokenized when its
    step comes (with ``on_bad_rows: skip``, a bad row is skipped and counted by reason)."""
    if objective.unpaired:
        raise ValueError("streaming reads paired rows; unpaired (KTO) data: streaming=false")
    files = jsonl_shards(d.train_data)
    settings = tokenize_settings(d, loss, objective.extra_columns)

    def build(row, position: int):
        if isinstance(row, DataError):  # a line that is not a JSON object
            raise row
        pair = build_pairs([row], tokenizer, settings, "error")[0]
        return dataclasses.replace(pair, index=position)

    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return StreamingSource(lambda: stream_jsonl(files), count_jsonl_rows(files), build, collate,
                           o.batch_size, o.grad_accum_steps, o.seed, d.shuffle_buffer,
                           digest.hexdigest(), collate.key, d.on_bad_rows == "skip")


def held_out_pairs(d: DataConfig, loss: LossConfig, tokenizer,
                   objective: PreferenceObjective) -> ExampleSet | None:
    """``eval_data``'s pairs read and tokenized up front with the objective's extra columns
    (ODPO's offset): a streamed run's and an online run's held-out set."""
    if not d.eval_data:
        return None
    return build_pairs(load_records(d.eval_data, d.eval_split), tokenizer,
                       tokenize_settings(d, loss, objective.extra_columns), d.on_bad_rows)


def build_run(cfg: TrainConfig, log: Callable[[str], Any] = print) -> Run:
    """A preference run (DPO and its family, KTO on unpaired rows)."""
    check_named_files(cfg)
    torch.manual_seed(cfg.optim.seed)
    objective = build_objective(cfg.loss)
    tokenizer = load_tokenizer(tokenizer_name(cfg.model))
    if cfg.data.streaming:
        extra = services(cfg, tokenizer, log)  # its files read before the model loads
        decision = decide_layout(cfg.model, cfg.data, base_model_name(cfg.model),
                                 hardware(cfg).device.kind, pairs=not objective.unpaired)
        held = held_out_pairs(cfg.data, cfg.loss, tokenizer, objective)
        policy = policy_for(cfg, tokenizer, objective.needs_reference)
        decision = proved(decision, policy, held or [], tokenizer.pad_token_id, cfg.data, log)
        cfg, collate = laid_out(cfg, decision, log, tokenizer.pad_token_id)
        source = streaming_source(cfg.data, cfg.optim, cfg.loss, tokenizer, objective, collate)
        log(f"train data {cfg.data.train_data}: {source.num_rows} rows, streamed")
        evaluation = None if held is None else EvalSet(
            held, collate, cfg.run.eval_batch_size, held.fingerprint(), collate.key)
        trainer = make_trainer(cfg, policy, objective, source, evaluation, log=log,
                               hardware=hardware(cfg), **extra)
        decision.write(cfg.run.output_dir) if trainer.accelerator.is_main_process else None
        train = ExampleSet([], DataReport())  # nothing held: rows come per step
        return Run(cfg, tokenizer, policy, objective, train, held, trainer)
    examples = load_pairs(cfg.data, cfg.loss, cfg.optim.seed, tokenizer, log, objective)
    extra = services(cfg, tokenizer, log)  # prompts, probes, rewards: read before the model
    decision = decide_layout(cfg.model, cfg.data, base_model_name(cfg.model),
                             hardware(cfg).device.kind, pairs=not objective.unpaired)
    policy = policy_for(cfg, tokenizer, objective.needs_reference)
    decision = proved(decision, policy, examples.train, tokenizer.pad_token_id, cfg.data, log)
    cfg, collate = laid_out(cfg, decision, log, tokenizer.pad_token_id)
    both = sources(cfg.optim, cfg.data, cfg.run, examples, collate)
    trainer = make_trainer(cfg, policy, objective, both.train, both.eval, log=log,
                           hardware=hardware(cfg), **extra)
    decision.write(cfg.run.output_dir) if trainer.accelerator.is_main_process else None
    return Run(cfg, tokenizer, policy, objective, examples.train, examples.eval, trainer)


def laid_out(cfg: TrainConfig, decision: LayoutDecision, log, pad_token_id: int,
             sequences: bool = False):
    """The run's config with the decided layout (``run.json`` records it) and its collator;
    the decision's line logged."""
    log(decision.line())
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                            batch_layout=decision.layout))
    kind = SequenceCollator if sequences else PairCollator
    return cfg, kind(pad_token_id, decision.layout, cfg.data.max_row_tokens)


def build_sft_run(cfg: TrainConfig, log: Callable[[str], Any] = print) -> Run:
    """A supervised fine-tuning run (completion-only NLL, packed without padding)."""
    check_named_files(cfg)
    torch.manual_seed(cfg.optim.seed)
    objective = SFTObjective()
    tokenizer = load_tokenizer(tokenizer_name(cfg.model))
    examples = load_sequences(cfg.data, cfg.optim.seed, tokenizer, log)
    extra = services(cfg, tokenizer, log)  # read before the model loads
    decision = decide_layout(cfg.model, cfg.data, base_model_name(cfg.model),
                             hardware(cfg).device.kind, pairs=False)
    policy = policy_for(cfg, tokenizer, needs_reference=False, pairs=False)
    decision = proved(decision, policy, examples.train, tokenizer.pad_token_id, cfg.data, log)
    cfg, collate = laid_out(cfg, decision, log, tokenizer.pad_token_id, sequences=True)
    both = sources(cfg.optim, cfg.data, cfg.run, examples, collate)
    trainer = make_trainer(cfg, policy, objective, both.train, both.eval, log=log,
                           hardware=hardware(cfg), **extra)
    decision.write(cfg.run.output_dir) if trainer.accelerator.is_main_process else None
    return Run(cfg, tokenizer, policy, objective, examples.train, examples.eval, trainer)
