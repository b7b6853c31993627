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

import torch

from .config import TrainConfig
from .pipeline import (
    Run,
    _settings,
    _sources,
    _tokenize_both,
    base_model_name,
    build_objective,
    finish_model,
    model_dtype,
    resolve_reference,
)
from .policies.vision_language import (
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
from .policies.vision_language.models import (
    image_token_id,
    load_processor,
    load_vision_language_model,
)
from .train import Trainer


def _refuse_text_only(cfg: TrainConfig) -> None:
    """Options of text runs that have no image counterpart yet: a named error, not a silent
    text-only behaviour."""
    unsupported = [name for name, on in (
        ("data.streaming", cfg.data.streaming), ("model.quantization", cfg.model.quantization
                                                  != "none"),
        ("run.eval_prompts", bool(cfg.run.eval_prompts)), ("geometry.probes",
                                                            bool(cfg.geometry.probes)),
        ("geometry.regularizer", cfg.geometry.regularizer != "off"),
        ("distributed.strategy", cfg.distributed.strategy in ("fsdp", "deepspeed"))) if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not supported for image-text models")


def vision_tokenizer(cfg: TrainConfig) -> VisionTokenizer:
    """The processor-backed tokenizer of the run's model (processor from ``model.tokenizer``,
    else the model or adapter folder)."""
    from transformers import AutoConfig

    name = base_model_name(cfg)
    config = AutoConfig.from_pretrained(name)
    processor = load_processor(cfg.model.tokenizer or cfg.model.name)
    return VisionTokenizer(processor, image_token_id(config), image_axis(config), _settings(cfg))


def build_vision_policy(cfg: TrainConfig, processor, needs_reference: bool,
                        pairs: bool = True) -> VisionLanguagePolicy:
    """The model, its trainable parts (LoRA on the language part; the vision encoder frozen
    unless ``model.vision_tower=trained``) and the reference."""
    m = cfg.model
    reference = resolve_reference(cfg, needs_reference)
    model = load_vision_language_model(base_model_name(cfg), dtype=model_dtype(cfg))
    targets = None
    if m.lora:
        targets = lora_targets(model, m.lora_target_modules, m.vision_tower == "trained")
    elif m.vision_tower == "frozen":
        for name in model_parts(model).vision:
            model.get_submodule(name).requires_grad_(False)
    model = finish_model(cfg, model, reference, targets)
    return VisionLanguagePolicy(model, processor, reference=reference,
                                logprob_impl=m.logprob_impl, chunk_size=m.lm_head_chunk_size,
                                ld_alpha=cfg.loss.ld_alpha if pairs else None,
                                merge_on_save=m.merge_adapter)


def _run(cfg: TrainConfig, log, objective, build, collate, needs_reference: bool,
         pairs: bool) -> Run:
    _refuse_text_only(cfg)
    torch.manual_seed(cfg.optim.seed)
    tokenizer = vision_tokenizer(cfg)
    train, evaluation = _tokenize_both(cfg, lambda rows: build(
        rows.records, tokenizer, cfg.data.on_bad_rows, rows.skipped), log)
    collate = collate(tokenizer.tokenizer.pad_token_id, tokenizer.image_axis,
                      cfg.data.batch_layout, cfg.data.max_row_tokens)
    policy = build_vision_policy(cfg, tokenizer.processor, needs_reference, pairs)
    source, eval_set = _sources(cfg, train, evaluation, collate)
    trainer = Trainer(cfg, policy, objective, source, eval_set, log=log)
    return Run(cfg, tokenizer.tokenizer, policy, objective, train, evaluation, trainer)


def build_vision_run(cfg: TrainConfig, log=print) -> Run:
    """DPO (or any paired loss) of an image-text model on rows with images."""
    objective = build_objective(cfg)
    if objective.unpaired:
        raise ValueError("unpaired losses (KTO) read no image rows yet: use a paired loss")
    return _run(cfg, log, objective, build_vision_pairs, VisionPairCollator,
                objective.needs_reference, pairs=True)


def build_vision_sft_run(cfg: TrainConfig, log=print) -> Run:
    """SFT of an image-text model on rows with images (completion-only NLL, packed)."""
    from .objectives import SFTObjective

    return _run(cfg, log, SFTObjective(), build_vision_sequences, VisionSequenceCollator,
                needs_reference=False, pairs=False)


def load_vision_policy(name: str, dtype: torch.dtype = torch.float32) -> VisionLanguagePolicy:
    """A trained model to evaluate or sample from: a model folder or hub name, or a LoRA adapter
    folder (its base loaded, the adapter applied); the processor from that folder."""
    from peft import PeftModel

    from .policies.causal_lm.lora import adapter_base

    base = adapter_base(name)
    model = load_vision_language_model(base or name, dtype=dtype)
    if base is not None:
        model = PeftModel.from_pretrained(model, name)
    model.config.use_cache = True
    return VisionLanguagePolicy(model.eval(), load_processor(name))


__all__ = ["build_vision_policy", "load_vision_policy", "build_vision_run", "build_vision_sft_run",
           "vision_tokenizer"]
