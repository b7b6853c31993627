"""From a :class:`TrainConfig` to a ready :class:`Trainer`: the glue the CLI and users share.

    >>> run = build_run(load_config("recipes/quickstart.yaml"))   # doctest: +SKIP
    >>> run.trainer.train(); run.trainer.save_final()              # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

import torch

from .config import TrainConfig
from .data import (
    PreferencePairs,
    TokenizeSettings,
    build_pairs,
    build_unpaired,
    collate_pairs,
    load_records,
)
from .models import load_causal_lm, load_tokenizer
from .policy import CausalLMPolicy
from .trainer import Trainer, build_objective


@dataclass
class Run:
    cfg: TrainConfig
    tokenizer: object
    policy: CausalLMPolicy
    train_pairs: PreferencePairs
    eval_pairs: PreferencePairs | None
    trainer: Trainer


def resolve_reference(cfg: TrainConfig) -> str:
    needs = build_objective(cfg).needs_reference
    if cfg.reference != "auto":
        if needs and cfg.reference == "none":
            raise ValueError(f"loss {cfg.loss!r} needs a reference model; reference=none refused")
        return cfg.reference
    if not needs:
        return "none"
    return "adapter" if cfg.lora else "copy"


def apply_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules or "all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def load_pairs(cfg: TrainConfig, tokenizer, log=print) -> tuple[PreferencePairs, PreferencePairs | None]:
    objective = build_objective(cfg)
    settings = TokenizeSettings(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                                chat_template_for_strings=cfg.chat_template_for_strings,
                                extra_columns=objective.extra_columns, offset_alpha=cfg.odpo_alpha)
    build = build_unpaired if objective.unpaired else build_pairs
    train_records = load_records(cfg.train_data, cfg.train_split)
    eval_records = None
    if cfg.eval_data:
        eval_records = load_records(cfg.eval_data, cfg.eval_split)
    elif cfg.eval_fraction > 0:
        order = list(range(len(train_records)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = max(1, int(len(order) * cfg.eval_fraction))
        eval_records = [train_records[i] for i in sorted(order[:n_eval])]
        train_records = [train_records[i] for i in sorted(order[n_eval:])]
    train = build(train_records, tokenizer, settings, cfg.on_bad_rows)
    log(f"train data {cfg.train_data}: {train.report.summary()}")
    for example in train.report.first_skipped:
        log(f"  skipped: {example}")
    evaluation = None
    if eval_records:
        evaluation = build(eval_records, tokenizer, settings, cfg.on_bad_rows)
        log(f"eval data {cfg.eval_data or 'held out from train'}: {evaluation.report.summary()}")
    return train, evaluation


def build_policy(cfg: TrainConfig, tokenizer=None) -> CausalLMPolicy:
    tokenizer = tokenizer or load_tokenizer(cfg.tokenizer or cfg.model)
    # LoRA under bf16 autocast: the frozen base is only ever read in bf16, so keep it in bf16
    # (half the weight memory, no per-step casts); trained weights stay fp32.
    bf16_base = cfg.dtype == "auto" and cfg.lora and cfg.mixed_precision == "bf16"
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" or bf16_base else torch.float32
    model = load_causal_lm(cfg.model, dtype=dtype)
    model.config.use_cache = False
    attention = getattr(model.config, "_attn_implementation", "sdpa")
    if cfg.batch_layout != "padded" and attention not in ("sdpa", "eager"):
        raise ValueError(f"batch_layout={cfg.batch_layout!r} needs a 4-D attention mask, which "
                         f"attn_implementation={attention!r} does not take; use batch_layout=padded")
    reference = resolve_reference(cfg)
    if cfg.lora:
        torch.manual_seed(cfg.seed)  # LoRA's initialization draws from the global generator
        model = apply_lora(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return CausalLMPolicy(model, tokenizer, reference=reference, logprob_impl=cfg.logprob_impl,
                          chunk_size=cfg.lm_head_chunk_size, ld_alpha=cfg.ld_alpha,
                          segment_attention=cfg.segment_attention and cfg.batch_layout != "padded")


def build_run(cfg: TrainConfig, log=print) -> Run:
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    train, evaluation = load_pairs(cfg, tokenizer, log)
    policy = build_policy(cfg, tokenizer)
    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id, layout=cfg.batch_layout,
                      max_row_tokens=cfg.max_row_tokens)
    fingerprints = (train.fingerprint(), evaluation.fingerprint() if evaluation else "")
    trainer = Trainer(cfg, policy, train, collate, evaluation, data_fingerprints=fingerprints, log=log)
    return Run(cfg, tokenizer, policy, train, evaluation, trainer)
