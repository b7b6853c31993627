"""A small text-to-image world for the image-generator demonstrations: prompts "a {colour}
{shape}", images of that shape rendered with PIL, a programmatic black-box reward (colour
match, shape match, sharpness), a frozen feature map (a small CNN trained to tell colour and
shape), and brief base training of a one-step generator (IMLE) and of a small diffusion model
(DDPM).

    >>> prompts()[:2]
    ['a red circle', 'a red square']
    >>> image = render("a blue square", 32, random.Random(0))
    >>> round(float(reward(to_unit(image)[None], ["a blue square"])[0]), 2) > 0.9
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .vision_shapes import COLOURS as ALL_COLOURS
from .vision_shapes import SHAPES

COLOURS = {k: ALL_COLOURS[k] for k in ("red", "green", "blue", "yellow")}
BACKGROUND = (235, 235, 235)
FILL = {"circle": 0.785, "square": 1.0, "triangle": 0.5}  # shape area / bounding box area


def prompts() -> list[str]:
    return [f"a {c} {s}" for c in COLOURS for s in SHAPES]


# three colour-shape combinations no training step sees: every colour and every shape still
# appears in training, with other partners (a compositional hold-out)
HELD_OUT = ("a red triangle", "a green circle", "a blue square")


def training_prompts() -> list[str]:
    """The nine prompts every training stage (features, bases, preference) draws from.

    >>> len(training_prompts()), "a red triangle" in training_prompts()
    (9, False)
    """
    return [p for p in prompts() if p not in HELD_OUT]


def parse(prompt: str) -> tuple[str, str]:
    words = prompt.split()
    return words[-2], words[-1]


def render(prompt: str, size: int, rng: random.Random):
    """The prompt's shape, of a random size and place, on a light background (PIL)."""
    from PIL import Image, ImageDraw

    colour, shape = parse(prompt)
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.22, 0.34) * size
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12) * size for _ in range(2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=COLOURS[colour])
    return image


def to_unit(image) -> torch.Tensor:
    """PIL -> (3, H, W) in [-1, 1]."""
    from ...policies.diffusion.data import to_tensor

    return to_tensor(image, image.size[0])


def dataset(n: int, size: int, seed: int,
            among: list[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered images (n, 3, size, size) in [-1, 1] and their prompts, drawn from
    ``among`` (default: the training prompts)."""
    rng = random.Random(seed)
    among = among or training_prompts()
    names = [rng.choice(among) for _ in range(n)]
    return torch.stack([to_unit(render(p, size, rng)) for p in names]), names


# --- the black-box reward ---------------------------------------------------------------------
@torch.no_grad()
def reward(images: torch.Tensor, prompts_: list[str]) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N,) in [0, 1]: the mean of colour match (foreground pixels
    close to the prompt's colour), shape match (how much of its bounding box the foreground
    fills, against the shape's share) and sharpness (pixels that are clean background or
    clean colour, not a blend). Computed without gradients: a black box to the generator."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1)
    background = torch.tensor(BACKGROUND, dtype=torch.float32)
    out = []
    for image, prompt in zip(pixels, prompts_, strict=True):  # (H, W, 3)
        colour, shape = parse(prompt)
        target = torch.tensor(COLOURS[colour], dtype=torch.float32)
        to_bg = (image - background).norm(dim=-1)  # (H, W)
        to_target = (image - target).norm(dim=-1)
        foreground = to_bg > 60
        if foreground.sum() < 4:
            out.append(0.0)
            continue
        colour_score = torch.exp(-to_target[foreground] / 60).mean()
        rows, cols = foreground.any(1).nonzero(), foreground.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill = foreground.sum() / box
        shape_score = (1 - (fill - FILL[shape]).abs() / 0.25).clamp(0, 1)
        sharp = ((to_bg < 40) | (to_target < 40)).float().mean()
        out.append(float((colour_score + shape_score + sharp) / 3))
    return torch.tensor(out)


# --- the frozen feature map ----------------------------------------------------------------
class ShapeFeatures(nn.Module):
    """A small CNN; after :func:`train_features`, its penultimate layer (64 features) is the
    frozen feature space DrPO drifts in and diversity is measured in."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, len(COLOURS) + len(SHAPES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)  # (N, 2 width)


def train_features(size: int = 32, steps: int = 300, seed: int = 0,
                   among: list[str] | None = None) -> ShapeFeatures:
    """Train the feature CNN to tell colour and shape (on the training prompts' images), then
    freeze it."""
    torch.manual_seed(seed)
    images, names = dataset(2000, size, seed, among)
    colour = torch.tensor([list(COLOURS).index(parse(p)[0]) for p in names])
    shape = torch.tensor([SHAPES.index(parse(p)[1]) for p in names])
    net = ShapeFeatures()
    optimizer = torch.optim.AdamW(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, len(images), (64,), generator=g)
        logits = net.head(net(images[pick]))
        loss = (F.cross_entropy(logits[:, :len(COLOURS)], colour[pick])
                + F.cross_entropy(logits[:, len(COLOURS):], shape[pick]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval().requires_grad_(False)


class DriftFeatures(nn.Module):
    """The feature map DrPO drifts in: the frozen CNN's features (what the shape and colour
    are) beside 2x-downsampled pixels (where the edges are, how sharp), each part divided by
    its mean norm on real images so both count."""

    def __init__(self, net: ShapeFeatures, size: int = 16, seed: int = 0):
        super().__init__()
        self.net = net
        real, _ = dataset(256, size, seed + 3)
        with torch.no_grad():
            self.register_buffer("scales", torch.stack([
                net(real).norm(dim=1).mean(), self._pixels(real).norm(dim=1).mean()]))

    @staticmethod
    def _pixels(images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, 2).flatten(1)  # (N, 3 H W / 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(images) / self.scales[0],
                          self._pixels(images) / self.scales[1]], dim=1)  # (N, D)


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise distance of (K, D) features (the samples of one prompt)."""
    d = torch.cdist(features.float(), features.float())  # (K, K)
    k = features.shape[0]
    return float(d.sum() / (k * (k - 1)))


# --- brief base training ---------------------------------------------------------------------
@dataclass
class BaseTraining:
    """steps, batch size and learning rate of a base generator's training, the prompts it
    draws from (default: the training prompts); after it, loss: the last, seen: the prompts
    its images had."""

    steps: int
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    among: list[str] | None = None
    loss: float = float("nan")
    seen: list[str] = field(default_factory=list)


def train_one_step_generator(generator: nn.Module, encoder: nn.Module, size: int,
                             settings: BaseTraining, candidates: int = 8) -> BaseTraining:
    """Implicit maximum likelihood estimation (Li and Malik 2018): for each real image, the
    closest of ``candidates`` samples of its prompt is pulled toward it; every mode is kept."""
    torch.manual_seed(settings.seed)
    images, names = dataset(3000, size, settings.seed + 1, settings.among)
    settings.seen = sorted(set(names))
    params = list(generator.parameters()) + list(encoder.parameters())
    optimizer = torch.optim.Adam(params, settings.learning_rate)
    g = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.steps):
        pick = torch.randint(0, len(images), (settings.batch_size,), generator=g).tolist()
        real = images[pick]  # (B, 3, H, W)
        batch_prompts = [names[i] for i in pick for _ in range(candidates)]
        noise = torch.randn(len(batch_prompts), generator.noise_dim, generator=g)
        with torch.no_grad():
            fake = generator(noise, encoder(batch_prompts)).view(len(pick), candidates,
                                                                *real.shape[1:])
            nearest = (fake - real[:, None]).pow(2).flatten(2).mean(-1).argmin(1)  # (B,)
        chosen = noise.view(len(pick), candidates, -1)[torch.arange(len(pick)), nearest]
        out = generator(chosen, encoder([names[i] for i in pick]))
        loss = (out - real).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        settings.loss = float(loss.detach())
    return settings


def train_diffusion(unet: nn.Module, encoder: nn.Module, scheduler, size: int,
                    settings: BaseTraining) -> BaseTraining:
    """DDPM noise prediction on rendered images (the prompt's words as conditioning)."""
    torch.manual_seed(settings.seed)
    images, names = dataset(3000, size, settings.seed + 2, settings.among)
    settings.seen = sorted(set(names))
    params = list(unet.parameters()) + list(encoder.parameters())
    optimizer = torch.optim.AdamW(params, settings.learning_rate)
    g = torch.Generator().manual_seed(settings.seed)
    steps = scheduler.config.num_train_timesteps
    for _ in range(settings.steps):
        pick = torch.randint(0, len(images), (settings.batch_size,), generator=g).tolist()
        x0 = images[pick]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, steps, (len(pick),), generator=g)
        predicted = unet(scheduler.add_noise(x0, noise, t), t,
                         encoder_hidden_states=encoder([names[i] for i in pick])).sample
        loss = F.mse_loss(predicted, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        settings.loss = float(loss.detach())
    return settings
