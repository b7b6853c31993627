"""Diffusion-DPO and SFT of a diffusers pipeline folder (``dpokit train model=FOLDER``,
``dpokit sft model=FOLDER``; Stable Diffusion 1.x / 2.x or SDXL). DPO: image pair rows
(``prompt, chosen, rejected``, or Pick-a-Pic's ``caption, jpg_0, jpg_1, label_0``), LoRA on
the UNet's attention (the base, adapter off, as the reference; without LoRA, a frozen copy),
images encoded by the VAE once per batch and noised in its latent space, each pair's noise
and timestep drawn with its batch (the reference runs beside each step on the same draw), the
registered ``sigmoid`` loss on ``-1/2 x`` denoising errors (Wallace et al. 2023; ``beta`` is
their β·T, e.g. 2500 for SD 1.5). SFT: ``prompt, image`` rows and the plain diffusion loss.
``final/`` holds the adapter in diffusers' LoRA format (``pipeline.load_lora_weights(final)``),
or the whole UNet under ``final/unet``, beside the usual model card.

    >>> run = build_diffusion_run(load_config(None, ["model=sd-folder", ...]))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..config.schema import ModelConfig, TrainConfig
from ..objectives import build_objective
from ..policies.diffusion import (
    DenoisingObjective,
    DiffusionImageCollator,
    DiffusionPairCollator,
    DiffusionPolicy,
    DiffusionSource,
    apply_lora,
    build_image_examples,
    build_image_pairs,
)
from ..policies.diffusion.pipeline import PipelineParts, load_pipeline
from ..train import make_trainer
from .common import Run, check_named_files, hardware, model_dtype, sources, tokenize_both


def _policy(m: ModelConfig, parts: PipelineParts, seed: int, reference: bool) -> DiffusionPolicy:
    """The pipeline's UNet, with LoRA on its attention when ``m.lora``; its reference (when
    ``reference``): the UNet with the adapter off, or a frozen copy."""
    unet = parts.unet
    if m.lora:
        targets = None if m.lora_target_modules in (None, "all-linear", ["all-linear"]) \
            else m.lora_target_modules
        unet = apply_lora(unet, m.lora_r, m.lora_alpha, targets, seed)
    return parts.policy(unet, ("adapter" if m.lora else "copy") if reference else "none")


def _trainer(cfg: TrainConfig, build_rows, collator, objective, reference: bool,
             log: Callable[[str], Any]) -> Run:
    """Load the pipeline, read the rows with ``build_rows(records, resolution, on_bad_rows,
    skipped)``, and build the run's trainer (``collator``: the class drawing each batch's
    noise and timesteps)."""
    check_named_files(cfg)
    m, d, o = cfg.model, cfg.data, cfg.optim
    torch.manual_seed(o.seed)
    parts = load_pipeline(m.name, model_dtype(m, hardware(cfg).precision))
    examples = tokenize_both(d, o.seed, lambda rows: build_rows(
        rows.records, parts.resolution, d.on_bad_rows, rows.skipped), log)
    policy = _policy(m, parts, o.seed, reference)
    collate = collator(parts.scheduler.config.num_train_timesteps, o.seed,
                       noise_shape=parts.latent_shape)
    both = sources(o, d, cfg.run, examples, collate, DiffusionSource)
    trainer = make_trainer(cfg, policy, objective, both.train, both.eval, log=log,
                           hardware=hardware(cfg))
    return Run(cfg, parts.tokenizer, policy, objective, examples.train, examples.eval, trainer)


def build_diffusion_run(cfg: TrainConfig, log: Callable[[str], Any] = print) -> Run:
    """The trainer of a Diffusion-DPO run on a pipeline folder."""
    objective = build_objective(cfg.loss)
    if objective.unpaired or not objective.needs_reference:
        raise ValueError(f"loss {cfg.loss.name!r}: Diffusion-DPO trains a paired loss against "
                         f"a reference (sigmoid)")
    if cfg.loss.precompute_ref_logps:
        raise ValueError("a diffusion run draws new noise every step, so its reference cannot "
                         "be precomputed: set precompute_ref_logps=false")
    return _trainer(cfg, build_image_pairs, DiffusionPairCollator, objective, True, log)


def build_diffusion_sft_run(cfg: TrainConfig, log: Callable[[str], Any] = print) -> Run:
    """The trainer of an SFT run (the plain diffusion loss) on a pipeline folder."""
    return _trainer(cfg, build_image_examples, DiffusionImageCollator, DenoisingObjective(),
                    False, log)
