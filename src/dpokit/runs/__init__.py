"""Run builders: from a typed config to a ready trainer, one module per modality, and the one
place that dispatches by modality (:func:`builder_for`, :func:`load_policy`).

    >>> build = builder_for(cfg, "train")      # doctest: +SKIP
    >>> run = build(cfg); run.trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ..config.schema import TrainConfig
from .common import Run
from .loading import folder_modality, load_policy, model_modality

Builder = Callable[..., Run]


def builder_for(cfg: TrainConfig, task: Literal["train", "sft"]) -> Builder:
    """The function that builds ``cfg``'s run: by the model's modality (a causal LM, an
    image-text model when its config has a ``vision_config``, a diffusers pipeline folder:
    Diffusion-DPO) and, for ``train``, by
    ``online.mode`` (offline pairs, or pairs from the policy's own samples). Iterative DPO
    is a sequence of runs: :func:`dpokit.runs.online.run_iterative`."""
    modality = model_modality(cfg.model)
    if modality == "diffusion":
        from .diffusion import build_diffusion_run, build_diffusion_sft_run

        if task == "train" and cfg.online.mode != "off":
            raise ValueError(f"{cfg.model.name}: a diffusers pipeline; `dpokit train` runs "
                             f"Diffusion-DPO on offline image pairs (no online mode)")
        return build_diffusion_sft_run if task == "sft" else build_diffusion_run
    if modality == "vision_language":
        from .vision_language import build_vision_run, build_vision_sft_run

        if task == "train" and cfg.online.mode != "off":
            raise ValueError("online.mode: image-text models train on offline pairs only")
        return build_vision_sft_run if task == "sft" else build_vision_run
    if modality != "causal_lm":
        raise ValueError(f"{cfg.model.name}: a {modality} model; `dpokit {task}` trains causal "
                         f"and image-text LMs")
    from .causal_lm import build_run, build_sft_run

    if task == "sft":
        return build_sft_run
    if cfg.online.mode == "online":
        from .online import build_online_run

        return build_online_run
    return build_run


__all__ = ["Builder", "Run", "builder_for", "folder_modality", "load_policy", "model_modality"]
