"""The style regularizer (Rajput 2026, "The Matching Principle"): a penalty on the hidden
states' sensitivity to style, added to each DPO step's loss, in three forms (see
:class:`StyleRegularizer`; the figures it protects, Style TDI and trajectory TDI, are in
:mod:`dpokit.eval.tdi`).

    >>> MatchedNoise().rank, MatchedNoise().shrinkage
    (128, 0.1)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..core.catalogue import Metric, declare
from ..core.protocols import RegularizerOutput
from ..policies.causal_lm.hidden import (
    EncodedTexts,
    decoder_layers,
    encode_texts,
    hidden_states,
    input_embeddings,
)
from ..policies.causal_lm.lora import is_peft
from .tdi import GeometrySettings, StyleProbes, class_index, layout_tdi, mean_pool

FORMS = ("finite_difference", "matched", "input_matched")

declare(
    Metric("reg/style", "style regularizer penalty", "{:.4g}", "regularizer penalty"),
    Metric("reg/style_capped", "  share of steps where the cap held it", "{:.2f}"),
)


@dataclass(frozen=True)
class MatchedNoise:
    """The ``matched`` form's noise: added after decoder layer ``layer`` (None: the middle
    one), covariance the hidden-state style covariance there truncated to its top ``rank``
    components and shrunk by ``shrinkage`` toward the isotropic matrix of the same trace."""

    layer: int | None = None
    rank: int = 128
    shrinkage: float = 0.1


class StyleRegularizer:
    """A penalty on the hidden states' sensitivity to style, added to each step's loss with
    ``weight`` (:class:`~dpokit.core.protocols.Regularizer`), at most ``cap_ratio`` times the
    step's task loss when ``cap_ratio`` > 0.

    Each step draws ``contents_per_step`` contents of the probe set (seeded by the step, the
    same on every process) and runs all their style variants.
    form ``finite_difference``: the squared-distance Style TDI of their pooled hidden states at
    ``settings.layer``. form ``matched``: the relative response (trajectory TDI) of the layers
    after ``noise.layer`` to per-token noise N(0, Sigma) added to that layer's hidden states,
    Sigma the covariance of the style variants' mean hidden states there around their
    content's mean, rank-truncated and shrunk (:class:`MatchedNoise`), estimated once over the
    whole probe set with the model as it starts (the paper's estimate before training; with
    LoRA, the adapter off, so a resumed run estimates the same; a resumed full fine-tune
    estimates it from the model it resumes).
    form ``input_matched``: the same with Sigma from the mean input embeddings, full rank,
    unshrunk, the noise added to the input embeddings, recomputed each step (cheap: the
    embedding layer only, and right when the embeddings train).
    """

    name = "style"

    def __init__(self, probes: StyleProbes, tokenizer, form: str, weight: float,
                 contents_per_step: int, settings: GeometrySettings, *,
                 cap_ratio: float = 0.0, noise: MatchedNoise = MatchedNoise()):
        if form not in FORMS:
            raise ValueError(f"style regularizer form must be one of {FORMS}, got {form!r}")
        self.probes, self.tokenizer, self.form = probes, tokenizer, form
        self.weight, self.settings, self.cap_ratio, self.noise = weight, settings, cap_ratio, noise
        self.contents = probes.content_names()
        self.per_step = min(contents_per_step, len(self.contents))
        if self.per_step < 2:
            raise ValueError("the style regularizer needs two or more probe contents per step")
        self.texts = encode_texts(tokenizer, probes.texts, settings.max_length)
        self._factor: torch.Tensor | None = None  # matched: estimated at the first step

    def _batch(self, step: int) -> tuple[EncodedTexts, list[str]]:
        chosen = random.Random(self.settings.seed * 1_000_003 + step).sample(self.contents,
                                                                              self.per_step)
        keep = set(chosen)
        rows = torch.tensor([i for i, c in enumerate(self.probes.contents) if c in keep])
        return self.texts.select(rows), [self.probes.contents[i] for i in rows.tolist()]

    def noise_layer(self, model) -> int:
        """Where the noise enters: 0 (the input embeddings) for ``input_matched``, else the
        ``MatchedNoise.layer``-th decoder layer's output (default: the middle one)."""
        if self.form == "input_matched":
            return 0
        blocks = len(decoder_layers(model))
        layer = blocks // 2 if self.noise.layer is None else self.noise.layer
        if not 0 <= layer < blocks:
            raise ValueError(f"geometry.regularizer_layer must be in 0..{blocks - 1} (a layer "
                             f"with layers after it), got {layer}")
        return layer

    def style_covariance_factor(self, model, device, layer: int = 0) -> torch.Tensor:
        """(M, H) factor F with Sigma_style = F^T F: each style variant's mean state at
        ``layer`` (0: the input embeddings) minus its content's mean, over sqrt(M)."""
        with torch.no_grad():
            texts = self.texts.to(device)
            states = (input_embeddings(model, texts) if layer == 0
                      else hidden_states(model, texts).layers[layer])  # (N, T, H)
            pooled = mean_pool(states.float(), texts.attention_mask)  # (N, H)
            cls = class_index(self.probes.contents).to(device)  # (N,)
            means = torch.zeros(int(cls.max()) + 1, pooled.shape[1], device=device)
            means = means.index_add(0, cls, pooled) / torch.bincount(cls).unsqueeze(1)
            deltas = pooled - means[cls]  # (N, H)
            return deltas / math.sqrt(len(deltas))

    def truncated_factor(self, factor: torch.Tensor) -> torch.Tensor:
        """(r, H) factor of the top ``rank`` components of F^T F (its SVD: S_r V_r^T)."""
        _, singular, vh = torch.linalg.svd(factor, full_matrices=False)  # (k,), (k, H)
        r = min(self.noise.rank, len(singular))
        return singular[:r, None] * vh[:r]  # (r, H)

    def _noise(self, model, device, generator,
               layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Noise of the form's covariance for the states at ``layer`` (:meth:`noise_layer`)."""
        shrink = 0.0
        if self.form == "matched":
            if self._factor is None:  # once, with the model as it starts (the paper's)
                with model.disable_adapter() if is_peft(model) else nullcontext():
                    self._factor = self.truncated_factor(
                        self.style_covariance_factor(model, device, layer))  # (r, H)
            factor, shrink = self._factor.to(device), self.noise.shrinkage
        else:
            factor = self.style_covariance_factor(model, device, layer)  # (M, H)
        iso = math.sqrt(shrink * float(factor.pow(2).sum()) / factor.shape[1])

        def noise(states: torch.Tensor) -> torch.Tensor:  # (N, T, H) ~ N(0, Sigma)
            z = torch.randn((*states.shape[:2], factor.shape[0]), generator=generator)
            shaped = math.sqrt(1 - shrink) * (z.to(device) @ factor)  # (N, T, H)
            if iso > 0:
                eps = torch.randn(states.shape, generator=generator, dtype=torch.float32)
                shaped = shaped + iso * eps.to(device)
            return shaped.to(states.dtype)

        return noise

    def __call__(self, policy: Any, step: int) -> RegularizerOutput:
        model = policy.model
        device = next(model.parameters()).device
        batch, contents = self._batch(step)
        batch = batch.to(device)
        if self.form == "finite_difference":
            states = hidden_states(model, batch)
            pooled = mean_pool(states.layers[self.settings.layer].float(), batch.attention_mask)
            value = layout_tdi(pooled, contents, squared=True)
            return RegularizerOutput(value)
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step)
        layer = self.noise_layer(model)
        clean = hidden_states(model, batch)
        noisy = hidden_states(model, batch, self._noise(model, device, generator, layer),
                              layer)
        keep = batch.attention_mask.bool()
        ratios = [(n[keep].float() - c[keep].float()).pow(2).sum()
                  / c[keep].float().pow(2).sum().clamp_min(1e-12)
                  for c, n in zip(clean.layers[layer + 1:], noisy.layers[layer + 1:],
                                  strict=True)]  # the layers after the noise
        return RegularizerOutput(torch.stack(ratios).mean())
