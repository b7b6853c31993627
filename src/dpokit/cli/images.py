"""``dpokit eval`` of an image generator (a diffusers pipeline folder, or a Diffusion-DPO run's
``final/``): ``--pairs`` held-out image pairs (Diffusion-DPO's loss and implicit accuracy at
fixed noise), ``--prompts`` held-out prompts (the reward of DDIM samples under ``--reward
module:function(images, prompts)``, the reference's on the same seeds, diversity, ``--grid``
a PNG of them).

    dpokit eval outputs/dd/final --pairs pairs.eval.jsonl --beta 2500 \\
        --prompts prompts.jsonl --reward my_rewards:aesthetic --grid grid.png
"""

from __future__ import annotations

import argparse

from ..core.types import AT_LEAST_ONE
from .common import number, read, write_figures


def add_arguments(ev) -> None:
    """The image model's options of ``dpokit eval`` (the rest are shared with text)."""
    ev.add_argument("--grid", help="image models: save the samples here as one PNG grid")
    ev.add_argument("--sample-steps", type=number(int, AT_LEAST_ONE), default=25,
                    help="image models: DDIM steps per sample, >= 1")


def cmd_eval_images(args: argparse.Namespace) -> int:
    from ..core.catalogue import table
    from ..data.builders import prompt_rows
    from ..eval.images import image_pair_metrics, sample_metrics
    from ..eval.rewards import import_object
    from ..runs import load_policy

    pairs = read([args.pairs]) if args.pairs else None
    prompts = [str(p.prompt) for p in prompt_rows(read([args.prompts]))] if args.prompts \
        else None
    reward = import_object(args.reward) if args.reward else None  # read before the model
    policy = load_policy(args.model)
    figures = {}
    if pairs:
        figures.update(image_pair_metrics(policy, pairs, args.beta))
    if prompts:
        figures.update(sample_metrics(policy, prompts, reward, args.num_samples,
                                      args.sample_steps, args.seed, args.grid))
    print(table(figures))
    if args.grid and prompts:
        print(f"samples: {args.grid}")
    write_figures(args.json, {"model": args.model, **figures})
    return 0
