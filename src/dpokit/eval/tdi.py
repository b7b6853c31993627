"""Embedding geometry: the Trajectory Deviation Index in both forms (Rajput 2026, "The
Matching Principle", code ``vishalstark512/matching-pmh``), its monitor during training, and
a regularizer that keeps it.

- **Style TDI** (layout form): on L2-normalized mean-pooled hidden states of probe texts, where
  a class is one content written in several styles, the mean within-class pairwise distance
  over the mean distance between class centroids. 0 when the map ignores style; lower is better.
- **Trajectory TDI**: ``mean ||phi(x + delta) - phi(x)||^2 / mean ||phi(x)||^2`` per layer, with
  small Gaussian ``delta`` on the input embeddings, averaged over the decoder layers. Here
  ``delta = sigma * rms(x) * N(0, I)`` per token, so the identity map scores ``sigma^2``.
- **Regularizers** (optional, during DPO): ``finite_difference`` penalizes the squared distance
  between hidden states of style variants of one content, relative to the squared distance
  between contents (the squared-distance Style TDI of the step's probe batch); ``matched``
  (the paper's matched penalty, its settings: the style covariance built from hidden-state
  deltas, truncated to rank 128, shrunk by 0.1; with ``regularizer_cap=0.3`` and weight 0.7)
  penalizes the response of the later layers to noise of that covariance added to the hidden
  states after a middle decoder layer (ours: where the noise enters; the official code applies
  it to the final representation itself, where the identity map leaves no gradient);
  ``input_matched`` (dpokit's earlier form) shapes the noise by the style changes of the mean
  input embeddings, full rank, unshrunk, and adds it to the input embeddings. They live in
  :mod:`dpokit.eval.style_regularizer`.

    >>> x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    >>> round(float(layout_tdi(x, ["a", "a", "b", "b"])), 6)   # each class one direction
    0.0
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..core.catalogue import Metric, declare
from ..data.io import DataError, load_records
from ..policies.causal_lm.hidden import encode_texts, hidden_states

# --- the math ---------------------------------------------------------------------------------


def class_index(labels: Sequence[Hashable]) -> torch.Tensor:
    ids: dict[Hashable, int] = {}
    return torch.tensor([ids.setdefault(label, len(ids)) for label in labels])  # (N,)


def layout_tdi(embeddings: torch.Tensor, labels: Sequence[Hashable],
               squared: bool = False) -> torch.Tensor:
    """Style TDI of embeddings (N, D) grouped by ``labels``, on L2-normalized rows: the mean
    over classes with two or more members of sqrt(mean squared within-class pairwise
    distance) (the official code's within term) / the mean between-centroid distance;
    ``squared``: mean squared distances over mean squared centroid distances (smooth at 0:
    the regularizer's form).

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> round(float(layout_tdi(x, [0, 0, 1, 1])), 4)   # within sqrt2, centroids sqrt2 apart
    1.0
    """
    x = F.normalize(embeddings.float(), dim=-1)  # (N, D)
    cls = class_index(labels).to(x.device)  # (N,)
    num_classes = int(cls.max()) + 1
    if num_classes < 2:
        raise ValueError("layout TDI needs two or more classes (contents)")

    def squared_distances(points: torch.Tensor) -> torch.Tensor:  # (K, D) -> (K*(K-1)/2,)
        i, j = torch.triu_indices(len(points), len(points), offset=1, device=points.device)
        return (points[i] - points[j]).pow(2).sum(-1)

    def distances(points: torch.Tensor) -> torch.Tensor:  # (K, D) -> (K*(K-1)/2,)
        d2 = squared_distances(points)
        return d2 if squared else d2.clamp_min(1e-30).sqrt() * (d2 > 0)

    within = [distances(x[cls == c]).mean() if squared else  # Rajput's tdi_layout: rms
              squared_distances(x[cls == c]).mean().clamp_min(1e-30).sqrt()
              for c in range(num_classes) if (cls == c).sum() > 1]
    if not within:
        raise ValueError("layout TDI needs a class (content) with two or more members")
    centroids = torch.stack([x[cls == c].mean(0) for c in range(num_classes)])  # (C, D)
    return torch.stack(within).mean() / distances(centroids).mean().clamp_min(1e-12)


declare(
    Metric("geometry/style_tdi", "Style TDI (lower is better)", "{:.4f}",
           "Style TDI (embedding layout, lower is better)", headline=True),
    Metric("geometry/reference_style_tdi", "  reference's", "{:.4f}"),
    Metric("geometry/style_tdi_change", "  relative change (eval: vs the reference; "
           "training: vs the first evaluation)", "{:+.1%}"),
    Metric("geometry/trajectory_tdi", "trajectory TDI", "{:.3g}", "trajectory TDI",
           headline=True),
    Metric("geometry/reference_trajectory_tdi", "  reference's", "{:.3g}"),
    Metric("geometry/trajectory_tdi_change", "  relative change vs the first evaluation",
           "{:+.1%}"),
)


@dataclass
class LayerRatios:
    """Running sums of ``||phi(x + delta) - phi(x)||^2`` and ``||phi(x)||^2`` per layer."""

    moved: list[float] = field(default_factory=list)
    size: list[float] = field(default_factory=list)

    def add(self, clean: Sequence[torch.Tensor], perturbed: Sequence[torch.Tensor]) -> None:
        """clean, perturbed: per layer (M, D) rows (the same samples, tokens, in order)."""
        if not self.moved:
            self.moved, self.size = [0.0] * len(clean), [0.0] * len(clean)
        for layer, (c, p) in enumerate(zip(clean, perturbed, strict=True)):
            self.moved[layer] += float((p.double() - c.double()).pow(2).sum())
            self.size[layer] += float(c.double().pow(2).sum())

    def ratios(self) -> list[float]:
        return [m / s if s > 0 else 0.0 for m, s in zip(self.moved, self.size, strict=True)]


def trajectory_tdi(clean: Sequence[torch.Tensor], perturbed: Sequence[torch.Tensor]) -> float:
    """Trajectory TDI of per-layer representations (M, D_l) before and after the input was
    perturbed: the layers' ``mean ||p - c||^2 / mean ||c||^2``, averaged.

    >>> c = [torch.tensor([[3.0, 4.0]])]
    >>> trajectory_tdi(c, [c[0] + torch.tensor([[0.0, 0.5]])])   # 0.25 / 25
    0.01
    """
    sums = LayerRatios()
    sums.add(clean, perturbed)
    return sum(sums.ratios()) / len(clean)


# --- the probe set ----------------------------------------------------------------------------


@dataclass
class StyleProbes:
    """Probe texts: ``texts[i]`` is content ``contents[i]`` written in style ``styles[i]``."""

    texts: list[str]
    contents: list[str]
    styles: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def content_names(self) -> list[str]:
        return list(dict.fromkeys(self.contents))

    def subset(self, contents: Sequence[str]) -> StyleProbes:
        keep = set(contents)
        rows = [i for i, c in enumerate(self.contents) if c in keep]
        return StyleProbes([self.texts[i] for i in rows], [self.contents[i] for i in rows],
                           [self.styles[i] for i in rows])


def load_probes(path: str) -> StyleProbes:
    """Rows with ``content``, ``style``, ``text`` (e.g. ``data/style_probes.eval.jsonl``); each
    content needs two or more styles, and there must be two or more contents."""
    texts, contents, styles = [], [], []
    for record in load_records(path):
        for name in ("content", "style", "text"):
            value = record.values.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(record.source, record.row, name,
                                "missing or not a non-empty string")
        texts.append(record.values["text"])
        contents.append(record.values["content"])
        styles.append(record.values["style"])
    probes = StyleProbes(texts, contents, styles)
    counts = {c: probes.contents.count(c) for c in probes.content_names()}
    alone = [c for c, n in counts.items() if n < 2]
    if alone:
        raise DataError(path, None, "content", f"{len(alone)} content(s) with one style only, "
                        f"e.g. {alone[0]!r}: a class needs two or more styles")
    if len(counts) < 2:
        raise DataError(path, None, "content", "needs two or more contents")
    return probes


# --- on a causal LM ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GeometrySettings:
    """layer: the hidden layer of Style TDI (-1: the last, after the final norm).
    sigma: trajectory noise, relative to the RMS of the input embeddings."""

    layer: int = -1
    sigma: float = 0.01
    max_length: int = 64
    batch_size: int = 16
    seed: int = 0


@dataclass
class Geometry:
    """Style TDI and trajectory TDI of one model on one probe set, with the per-layer
    trajectory ratios (index 0: the input embeddings themselves, ``sigma^2`` by design)."""

    style_tdi: float
    trajectory_tdi: float
    trajectory_per_layer: list[float]

    def figures(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}style_tdi": self.style_tdi,
                f"{prefix}trajectory_tdi": self.trajectory_tdi}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T, H) hidden states, (N, T) mask -> (N, H) mean over real tokens."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (N, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


def relative_noise(sigma: float, generator: torch.Generator) -> Callable:
    """``delta = sigma * rms(x) * N(0, I)``: Gaussian noise scaled to the embeddings' size."""

    def noise(embeds: torch.Tensor) -> torch.Tensor:
        rms = embeds.detach().float().pow(2).mean().sqrt()
        eps = torch.randn(embeds.shape, generator=generator, dtype=torch.float32)
        return (sigma * rms * eps.to(embeds.device)).to(embeds.dtype)  # (N, T, H)

    return noise


def _real_tokens(layers: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    keep = mask.bool()
    return [h[keep].float() for h in layers]  # per layer (M, H)


@torch.no_grad()
def measure_geometry(model, tokenizer, probes: StyleProbes,
                     settings: GeometrySettings = GeometrySettings()) -> Geometry:
    """Both TDIs of ``model`` on ``probes`` (eval mode is the caller's; seeded noise, so two
    models are compared on the same perturbations)."""
    device = next(model.parameters()).device
    texts = encode_texts(tokenizer, probes.texts, settings.max_length)
    generator = torch.Generator().manual_seed(settings.seed)
    pooled, sums = [], LayerRatios()
    for start in range(0, len(probes), settings.batch_size):
        batch = texts.select(slice(start, start + settings.batch_size)).to(device)
        clean = hidden_states(model, batch)
        pooled.append(mean_pool(clean.layers[settings.layer].float(), batch.attention_mask))
        noisy = hidden_states(model, batch, relative_noise(settings.sigma, generator))
        sums.add(_real_tokens(clean.layers, batch.attention_mask),
                 _real_tokens(noisy.layers, batch.attention_mask))
    per_layer = sums.ratios()
    decoder = per_layer[1:] or per_layer
    style = float(layout_tdi(torch.cat(pooled), probes.contents))
    return Geometry(style, sum(decoder) / len(decoder), per_layer)


class GeometryMonitor:
    """An evaluator for the training loop: both TDIs at every evaluation (``eval/geometry/``),
    their change since the first evaluation, and a warning when Style TDI has risen by more
    than ``warn_increase`` (a fraction) over that first value.

    Called with the policy in eval mode; reads ``policy.model``."""

    def __init__(self, probes: StyleProbes, tokenizer, settings: GeometrySettings,
                 warn_increase: float, log: Callable[[str], None] = print):
        self.probes, self.tokenizer, self.settings = probes, tokenizer, settings
        self.warn_increase, self.log = warn_increase, log
        self.first: Geometry | None = None

    def __call__(self, policy: Any) -> dict[str, float]:
        now = measure_geometry(policy.model, self.tokenizer, self.probes, self.settings)
        self.first = self.first or now
        rise = now.style_tdi / self.first.style_tdi - 1 if self.first.style_tdi else 0.0
        figures = now.figures("eval/geometry/")
        figures["eval/geometry/style_tdi_change"] = rise
        figures["eval/geometry/trajectory_tdi_change"] = (
            now.trajectory_tdi / self.first.trajectory_tdi - 1 if self.first.trajectory_tdi
            else 0.0)
        if rise > self.warn_increase:
            message = (f"embedding geometry: Style TDI rose {rise:+.1%} over its first value "
                       f"({self.first.style_tdi:.4f} -> {now.style_tdi:.4f}), past "
                       f"geometry.warn_increase={self.warn_increase:.0%}; DPO is making the "
                       f"hidden states care about style (consider geometry.regularizer)")
            warnings.warn(message, stacklevel=2)
            self.log(f"warning: {message}")
        return figures
