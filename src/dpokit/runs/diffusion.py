"""Diffusion-DPO of a diffusers pipeline folder (``dpokit train model=FOLDER``): image pair
rows (``prompt, chosen, rejected``, or Pick-a-Pic's ``caption, jpg_0, jpg_1, label_0``), LoRA
on the UNet's attention (the base, adapter off, as the reference), images encoded by the VAE
once per batch and noised in its latent space, each pair's noise and timestep drawn with its
batch (the reference runs beside each step on the same draw), the registered ``sigmoid`` loss
on ``-1/2 x`` denoising errors (Wallace et al. 2023; ``beta`` is their β·T, e.g. 2500 for
SD 1.5). ``final/`` holds the adapter in diffusers' LoRA format
(``pipeline.load_lora_weights(final)``) beside the usual model card.

    >>> run = build_diffusion_run(load_config(None, ["model=sd-folder", ...]))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..config.schema import TrainConfig
from ..objectives import build_objective
from ..policies.diffusion import (
    CLIPPromptEncoder,
    DiffusionPairCollator,
    DiffusionPolicy,
    DiffusionSource,
    apply_lora,
    build_image_pairs,
)
from ..policies.diffusion.pipeline import load_pipeline
from ..train import Trainer
from .common import Run, hardware, model_dtype, sources, tokenize_both


def build_diffusion_run(cfg: TrainConfig, log: Callable[[str], Any] = print) -> Run:
    """The trainer of a Diffusion-DPO run on a Stable Diffusion 1.x / 2.x folder."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    objective = build_objective(cfg.loss)
    if objective.unpaired or not objective.needs_reference:
        raise ValueError(f"loss {cfg.loss.name!r}: Diffusion-DPO trains a paired loss against "
                         f"a reference (sigmoid)")
    if cfg.loss.precompute_ref_logps:
        raise ValueError("a diffusion run draws new noise every step, so its reference cannot "
                         "be precomputed: set precompute_ref_logps=false")
    torch.manual_seed(o.seed)
    parts = load_pipeline(m.name, model_dtype(m, hardware(cfg).precision))
    examples = tokenize_both(d, o.seed, lambda rows: build_image_pairs(
        rows.records, parts.resolution, d.on_bad_rows, rows.skipped), log)
    unet = parts.unet
    if m.lora:
        targets = None if m.lora_target_modules in (None, "all-linear", ["all-linear"]) \
            else m.lora_target_modules
        unet = apply_lora(unet, m.lora_r, m.lora_alpha, targets, o.seed)
    encoder = CLIPPromptEncoder(parts.tokenizer, parts.text_encoder)
    policy = DiffusionPolicy(unet, parts.scheduler, encoder,
                             reference="adapter" if m.lora else "copy", vae=parts.vae,
                             source=parts.source)
    collate = DiffusionPairCollator(parts.scheduler.config.num_train_timesteps, o.seed,
                                    noise_shape=parts.latent_shape)
    both = sources(o, d, cfg.run, examples, collate, DiffusionSource)
    trainer = Trainer(cfg, policy, objective, both.train, both.eval, log=log)
    return Run(cfg, parts.tokenizer, policy, objective, examples.train, examples.eval, trainer)
