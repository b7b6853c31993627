"""Synthetic scenes for vision-language hallucination experiments: coloured shapes in a 2x2
grid rendered with PIL, questions with program answers, a checker of the attributes an answer
names that the image does not have (hallucinations), rejected answers with such attributes,
and the pretraining of a small vision encoder from scratch on the scenes.

    >>> scene = Scene((Item("red", "circle", 0), Item("blue", "square", 3)))
    >>> scene.describe()
    'A red circle in the top left and a blue square in the bottom right.'
    >>> hallucinated(scene, "A green circle and a blue triangle.")
    ['green', 'triangle']
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from torch import nn

COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215),
           "yellow": (235, 200, 30), "purple": (140, 60, 170), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle")
CELLS = ("top left", "top right", "bottom left", "bottom right")
NUMBERS = ("zero", "one", "two", "three", "four")
KINDS = ("colour", "count", "describe", "position")


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    cell: int  # index into CELLS


@dataclass(frozen=True)
class Scene:
    """Up to four shapes, at most one per cell of a 2x2 grid."""

    items: tuple[Item, ...]

    def render(self, size: int = 48, jitter: random.Random | None = None):
        """The scene as an RGB PIL image (white background); ``jitter`` moves and resizes each
        shape a little inside its cell."""
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw, half = ImageDraw.Draw(image), size // 2
        for item in self.items:
            x0, y0 = (item.cell % 2) * half, (item.cell // 2) * half
            pad = half // 6 + (jitter.randint(-1, 2) if jitter else 0)
            dx, dy = (jitter.randint(-1, 1), jitter.randint(-1, 1)) if jitter else (0, 0)
            box = (x0 + pad + dx, y0 + pad + dy, x0 + half - pad + dx, y0 + half - pad + dy)
            fill = COLOURS[item.colour]
            if item.shape == "circle":
                draw.ellipse(box, fill=fill)
            elif item.shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]),
                              (box[0], box[3])], fill=fill)
        return image

    def at(self, cell: int) -> Item | None:
        return next((i for i in self.items if i.cell == cell), None)

    def describe(self) -> str:
        parts = [f"a {i.colour} {i.shape} in the {CELLS[i.cell]}"
                 for i in sorted(self.items, key=lambda i: i.cell)]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return text[0].upper() + text[1:] + "."


# colour-shape combinations no training scene has (each colour and each shape is seen in
# training with other partners): every evaluation scene holds at least one of them, so none
# equals a training scene, whatever the scene space's size
HELD_OUT = (("red", "triangle"), ("green", "circle"), ("blue", "square"),
            ("orange", "triangle"))
SPLITS = ("any", "train", "held_out")


def random_scene(rng: random.Random, max_items: int = 3, split: str = "any") -> Scene:
    """A scene of 1..``max_items`` items in distinct cells. ``split="train"``: no item is a
    held-out colour-shape combination; ``"held_out"``: at least one is.

    >>> scene = random_scene(random.Random(0), split="held_out")
    >>> any((i.colour, i.shape) in HELD_OUT for i in scene.items)
    True
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cells = sorted(rng.sample(range(4), rng.randint(1, max_items)))
    special = rng.choice(cells) if split == "held_out" else None
    items = []
    for c in cells:
        while True:
            combo = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
            if c == special:
                combo = rng.choice(HELD_OUT)
            if split != "train" or combo not in HELD_OUT:
                break
        items.append(Item(*combo, c))
    return Scene(tuple(items))


@dataclass(frozen=True)
class Question:
    kind: str  # one of KINDS
    text: str
    answer: str


def ask(scene: Scene, kind: str, rng: random.Random) -> Question:
    """A question of ``kind`` about ``scene`` with its program answer."""
    if kind == "colour":
        shapes = [i.shape for i in scene.items]
        unique = [i for i in scene.items if shapes.count(i.shape) == 1] or list(scene.items)
        item = rng.choice(unique)
        where = "" if shapes.count(item.shape) == 1 else f" in the {CELLS[item.cell]}"
        return Question(kind, f"What colour is the {item.shape}{where}?",
                        f"The {item.shape}{where} is {item.colour}.")
    if kind == "count":
        n = len(scene.items)
        answer = "There is one shape." if n == 1 else f"There are {NUMBERS[n]} shapes."
        return Question(kind, "How many shapes are there?", answer)
    if kind == "describe":
        return Question(kind, "Describe the image.", scene.describe())
    cell = rng.randrange(4)
    item = scene.at(cell)
    answer = f"A {item.colour} {item.shape}." if item else "Nothing."
    return Question(kind, f"What is in the {CELLS[cell]}?", answer)


_WORDS = re.compile(r"[a-z]+")


def _named(text: str) -> tuple[set[str], set[str]]:
    words = set(_WORDS.findall(text.lower()))
    words |= {w[:-1] for w in words if w.endswith("s")}  # plurals: "squares"
    return words & set(COLOURS), words & set(SHAPES)


def hallucinated(scene: Scene, answer: str) -> list[str]:
    """Colours and shapes the answer names that no shape in the scene has, sorted."""
    colours, shapes = _named(answer)
    return sorted((colours - {i.colour for i in scene.items})
                  | (shapes - {i.shape for i in scene.items}))


def correct(question: Question, answer: str) -> bool:
    """The answer says what the program answer says (case, spacing and final period aside)."""
    def norm(t: str) -> str:
        return " ".join(_WORDS.findall(t.lower()))
    return norm(answer) == norm(question.answer)


def with_absent_attribute(scene: Scene, answer: str, rng: random.Random) -> str | None:
    """``answer`` with one colour or shape it names replaced by one the scene lacks (a
    hallucinated answer), or None when it names none."""
    colours, shapes = _named(answer)
    absent_colours = [c for c in COLOURS if c not in {i.colour for i in scene.items}]
    absent_shapes = [s for s in SHAPES if s not in {i.shape for i in scene.items}]
    options = [(c, absent_colours) for c in colours if absent_colours]
    options += [(s, absent_shapes) for s in shapes if absent_shapes]
    if not options:
        return None
    word, pool = rng.choice(options)
    return re.sub(rf"\b{word}\b", rng.choice(pool), answer, count=1)


# --- a small vision encoder, trained from scratch on the scenes ------------------------------
@dataclass
class PretrainedEncoder:
    """tower: the trained ``CLIPVisionModel``; cell_accuracy: on scenes never trained on, the
    share of grid cells whose colour and shape (or emptiness) are both read right, on scenes
    of the held-out split when it trained on the training split; seen: its training scenes."""

    tower: nn.Module
    cell_accuracy: float
    seen: frozenset = frozenset()


def pretrain_encoder(vision_config, steps: int = 600, batch_size: int = 64, image_size: int = 48,
                     scenes: int = 4000, seed: int = 0, lr: float = 1e-3,
                     log=print, split: str = "any") -> PretrainedEncoder:
    """A CLIP vision tower trained from scratch to tell, for each grid cell, the colour and the
    shape of what is there (or that it is empty), from the mean of that cell's patch features,
    on ``scenes`` rendered scenes of ``split`` (each drawn ``steps * batch_size / scenes``
    times)."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tower = CLIPVisionModel(vision_config)
    width, grid = vision_config.hidden_size, image_size // vision_config.patch_size
    heads = nn.Linear(width, len(COLOURS) + 1 + len(SHAPES) + 1)
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    cell_of = torch.tensor([(r // (grid // 2)) * 2 + (c // (grid // 2))
                            for r in range(grid) for c in range(grid)])  # (P,)
    pool = torch.stack([(cell_of == k).float() / (cell_of == k).sum() for k in range(4)])  # (4, P)
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)

    def data(n: int, which: str):
        scenes = [random_scene(rng, 4, which) for _ in range(n)]
        pixels = processor([s.render(image_size, rng) for s in scenes],
                           return_tensors="pt")["pixel_values"]  # (n, 3, H, W)
        colour = torch.tensor([[list(COLOURS).index(s.at(k).colour) if s.at(k) else len(COLOURS)
                                for k in range(4)] for s in scenes])  # (n, 4)
        shape = torch.tensor([[SHAPES.index(s.at(k).shape) if s.at(k) else len(SHAPES)
                               for k in range(4)] for s in scenes])  # (n, 4)
        return pixels, colour, shape, scenes

    *train, seen = data(scenes, split)  # rendered once; batches are drawn from it
    generator = torch.Generator().manual_seed(seed)

    def logits(pixels):
        patches = tower(pixel_values=pixels).last_hidden_state[:, 1:]  # (n, P, W), CLS dropped
        cells = torch.einsum("kp,npw->nkw", pool, patches)  # (n, 4, W)
        out = heads(cells)  # (n, 4, C + 1 + S + 1)
        return out[..., :len(COLOURS) + 1], out[..., len(COLOURS) + 1:]

    tower.train()
    for step in range(steps):
        pick = torch.randint(0, scenes, (batch_size,), generator=generator)
        pixels, colour, shape = (t[pick] for t in train)
        colour_logits, shape_logits = logits(pixels)
        loss = (nn.functional.cross_entropy(colour_logits.flatten(0, 1), colour.flatten())
                + nn.functional.cross_entropy(shape_logits.flatten(0, 1), shape.flatten()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"encoder step {step}: loss {loss.item():.3f}")
    tower.eval()
    with torch.no_grad():
        pixels, colour, shape, _ = data(256, "held_out" if split == "train" else split)
        colour_logits, shape_logits = logits(pixels)
        right = (colour_logits.argmax(-1) == colour) & (shape_logits.argmax(-1) == shape)
    return PretrainedEncoder(tower, float(right.float().mean()), frozenset(seen))
