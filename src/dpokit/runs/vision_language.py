"""Vision-language runs: DPO (and its family) and SFT of an image-text-to-text model from rows
with ``images``, on the generic loop. ``dpokit train`` / ``dpokit sft`` come here when the
model's config has a ``vision_config``.

What differs from a text run is only what loads: the processor (rendering, image tokens),
the model (``AutoModelForImageTextToText``), LoRA on the language part unless
``model.vision_tower=trained``, the batches carrying pixel values. The objective, reference
(precomputed by default), loop, checkpoints and metrics are the text run's.

    >>> run = build_vision_run(load_config("recipes/vlm_dpo.yaml"))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ..config.schema import ModelConfig, TrainConfig
from ..core.hardware import HardwareChoice
from ..objectives import SFTObjective, build_objective
from ..policies.vision_language import (
    VisionLanguagePolicy,
    VisionPairCollator,
    VisionSequenceCollator,
    VisionTokenizer,
    build_vision_pairs,
    build_vision_sequences,
    image_axis,
    lora_targets,
    model_parts,
)
from ..policies.vision_language.models import (
    check_layout_window,
    family_batching,
    image_token_id,
    load_processor,
    load_vision_language_model,
    mrope_merge,
)
from ..train import make_trainer
from .common import (
    Run,
    base_model_name,
    check_named_files,
    finish_model,
    hardware,
    model_dtype,
    resolve_reference,
    sampo_seed,
    sources,
    tokenize_both,
    tokenize_settings,
)


def _refuse_text_only(cfg: TrainConfig) -> None:
    """Options of text runs that have no image counterpart yet: a named error, not a silent
    text-only behaviour."""
    unsupported = [name for name, on in (
        ("data.streaming", cfg.data.streaming), ("model.quantization", cfg.model.quantization
                                                  != "none"),
        ("run.eval_prompts", bool(cfg.run.eval_prompts)), ("geometry.probes",
                                                            bool(cfg.geometry.probes)),
        ("geometry.regularizer", cfg.geometry.regularizer != "off"),
        ("model.segment_tokens", bool(cfg.model.segment_tokens)),
        ("distributed.strategy", cfg.distributed.strategy in ("fsdp", "deepspeed"))) if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not supported for image-text models")


def model_config(cfg: TrainConfig):
    """The run's base model's config (its family's traits are read from it)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_model_name(cfg.model))


def vision_tokenizer(cfg: TrainConfig, config=None) -> VisionTokenizer:
    """The processor-backed tokenizer of the run's model (processor from ``model.tokenizer``,
    else the model or adapter folder)."""
    config = config or model_config(cfg)
    processor = load_processor(cfg.model.tokenizer or cfg.model.name)
    return VisionTokenizer(processor, image_token_id(config), image_axis(config),
                           tokenize_settings(cfg.data), mrope_merge(config, processor))


def build_vision_policy(m: ModelConfig, choice: HardwareChoice, reference: str, processor, *,
                        ld_alpha: float | None = None, sampo_seed: int | None = None,
                        seed: int = 0) -> VisionLanguagePolicy:
    """The model, its trainable parts (LoRA on the language part; the vision encoder frozen
    unless ``model.vision_tower=trained``) and the ``reference`` kind."""
    model = load_vision_language_model(base_model_name(m), dtype=model_dtype(m, choice.precision))
    targets = None
    if m.lora:
        targets = lora_targets(model, m.lora_target_modules, m.vision_tower == "trained")
    elif m.vision_tower == "frozen":
        for name in model_parts(model).vision:
            model.get_submodule(name).requires_grad_(False)
    model = finish_model(m, model, reference, choice.precision, seed, targets)
    return VisionLanguagePolicy(model, processor, reference=reference,
                                logprob_impl=m.logprob_impl, chunk_size=m.lm_head_chunk_size,
                                ld_alpha=ld_alpha, merge_on_save=m.merge_adapter,
                                sampo_seed=sampo_seed)


def _run(cfg: TrainConfig, log, objective, build, collate, needs_reference: bool,
         pairs: bool) -> Run:
    _refuse_text_only(cfg)
    check_named_files(cfg)
    torch.manual_seed(cfg.optim.seed)
    d, config = cfg.data, model_config(cfg)
    d = dataclasses.replace(d, batch_layout=check_layout_window(config, d.batch_layout,
                                                                d.max_length))
    cfg = dataclasses.replace(cfg, data=d)
    log(f"layout: {d.batch_layout} (through {config.model_type}'s own attention and masks)")
    tokenizer = vision_tokenizer(cfg, config)
    examples = tokenize_both(d, cfg.optim.seed, lambda rows: build(
        rows.records, tokenizer, d.on_bad_rows, rows.skipped), log)
    family = family_batching(config, tokenizer.image_token_id, tokenizer.mrope_merge)
    collate = collate(tokenizer.tokenizer.pad_token_id, tokenizer.image_axis, d.batch_layout,
                      d.max_row_tokens, family.mrope, family.block_images)
    reference = resolve_reference(cfg.model, needs_reference, cfg.loss.name)
    policy = build_vision_policy(cfg.model, hardware(cfg), reference, tokenizer.processor,
                                 ld_alpha=cfg.loss.ld_alpha if pairs else None,
                                 sampo_seed=sampo_seed(cfg.loss, cfg.optim.seed) if pairs
                                 else None, seed=cfg.optim.seed)
    both = sources(cfg.optim, d, cfg.run, examples, collate)
    trainer = make_trainer(cfg, policy, objective, both.train, both.eval, log=log,
                           hardware=hardware(cfg))
    return Run(cfg, tokenizer.tokenizer, policy, objective, examples.train, examples.eval,
               trainer)


def build_vision_run(cfg: TrainConfig, log: Callable[[str], Any] = print) -> Run:
    """DPO (or any paired loss) of an image-text model on rows with images."""
    objective = build_objective(cfg.loss)
    if objective.unpaired:
        raise ValueError("unpaired losses (KTO) read no image rows yet: use a paired loss")
    return _run(cfg, log, objective, build_vision_pairs, VisionPairCollator,
                objective.needs_reference, pairs=True)


def build_vision_sft_run(cfg: TrainConfig, log: Callable[[str], Any] = print) -> Run:
    """SFT of an image-text model on rows with images (completion-only NLL, packed)."""
    return _run(cfg, log, SFTObjective(), build_vision_sequences, VisionSequenceCollator,
                needs_reference=False, pairs=False)


__all__ = ["build_vision_policy", "build_vision_run", "build_vision_sft_run", "vision_tokenizer"]
