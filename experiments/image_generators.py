"""Preference optimization of image generators, offline: DrPO on a one-step generator and
Diffusion-DPO on a small diffusion model, both improving a programmatic black-box reward on
16x16 images of "a {colour} {shape}" (dpokit.apps.worlds.image_shapes).

1. A frozen feature map: a small CNN trained to tell colour and shape.
2. Bases, trained briefly: a one-step conditional generator (IMLE) and a conditional UNet
   (diffusers UNet2DConditionModel, DDPM, sampled with 20 DDIM steps).
3. DrPO (the generic loop, online): K = 8 samples per prompt each step, z-scored rewards, the
   top 2 / bottom 2 as positives / negatives in a frozen feature space (the CNN's features
   beside 2x-pooled pixels: the CNN alone does not see sharpness), the reference drift
   against the frozen base generator.
4. Diffusion-DPO (the generic loop, the registered sigmoid loss on denoising errors): pairs
   (best, worst of 8 base samples per prompt and seed group), LoRA on the UNet's attention, the
   base as reference.
Every training stage (the feature CNN, both bases, both preference runs) draws from nine of
the twelve prompts; three colour-shape combinations (``HELD_OUT``: each colour and shape seen
with other partners) are checked to be in none of them and evaluated apart. Reports reward
before / after on the training prompts (new noise) and on the held-out prompts, diversity (mean
pairwise feature distance among one prompt's samples), and draws a grid of samples. Writes
experiments/results/image_generators.{md,json,png} and image_generators_samples.png.

    python experiments/image_generators.py            # about 10 minutes on 2 CPU cores
    python experiments/image_generators.py --replot
    python experiments/image_generators.py --smoke    # every step at toy sizes, no results
"""

from __future__ import annotations

import json
import sys
import time

from common import (  # noqa: E402
    ROOT,
    check_disjoint,
    disjointness_line,
    experiment,
    pyplot,
    results_dir,
    save_table,
)

OUT = ROOT / "outputs" / "image_generators"
SIZE = 16  # 16x16 images: a CPU budget (a UNet step at 32x32 costs about 4 times more)
SMOKE = "--smoke" in sys.argv
S = ({"features": 5, "generator": 5, "diffusion": 5, "drpo": 2, "groups": 1, "dpo": 2,
      "eval": 2} if SMOKE else
     {"features": 300, "generator": 500, "diffusion": 800, "drpo": 400, "groups": 8, "dpo": 200,
      "eval": 8})


def _config(recipe: str, **overrides):
    from dpokit.config import load_config

    return load_config(str(ROOT / "src" / "dpokit" / "recipes" / recipe), **overrides)


def evaluate(sample, features, prompts: list[str], seeds: int) -> dict:
    """Mean reward and mean per-prompt diversity over ``seeds`` samples of each prompt, from
    one seeded batch; ``sample(prompts, seed)`` -> images."""
    import torch

    from dpokit.apps.worlds.image_shapes import diversity, reward

    rewards, spreads, grids = [], [], {}
    every = sample([p for p in prompts for _ in range(seeds)], 0).view(
        len(prompts), seeds, 3, SIZE, SIZE)
    for prompt, images in zip(prompts, every, strict=True):  # (seeds, 3, H, W)
        rewards.append(float(reward(images, [prompt] * seeds).mean()))
        with torch.no_grad():
            spreads.append(diversity(features(images)))
        grids[prompt] = images[:4].cpu()
    return {"reward": sum(rewards) / len(rewards), "diversity": sum(spreads) / len(spreads),
            "reward_by_prompt": dict(zip(prompts, rewards, strict=True)), "grid": grids}


def evaluate_both(sample, features, stage: str = "before") -> dict:
    """``{stage: the training prompts at new noise, stage_held_out: the held-out prompts}``."""
    from dpokit.apps.worlds.image_shapes import HELD_OUT, training_prompts

    return {stage: evaluate(sample, features, training_prompts(), S["eval"]),
            f"{stage}_held_out": evaluate(sample, features, list(HELD_OUT), S["eval"])}


def run_drpo(features, log) -> dict:
    import torch

    from dpokit.apps.worlds.image_shapes import (
        BaseTraining,
        DriftFeatures,
        prompts,
        reward,
        train_one_step_generator,
        training_prompts,
    )
    from dpokit.policies.diffusion import (
        DrPOObjective,
        DrPOSource,
        GeneratorPolicy,
        OneStepGenerator,
        WordEncoder,
    )
    from dpokit.train import make_trainer

    torch.manual_seed(0)
    generator = OneStepGenerator(noise_dim=32, condition_dim=32, size=SIZE, width=64)
    encoder = WordEncoder(sorted({w for p in prompts() for w in p.split()[1:]}), dim=32,
                          length=2)
    started = time.perf_counter()
    base = train_one_step_generator(generator, encoder, SIZE, BaseTraining(S["generator"]))
    base_minutes = (time.perf_counter() - started) / 60
    policy = GeneratorPolicy(generator, encoder)
    config = _config("drpo_shapes.yaml", max_steps=S["drpo"], output_dir=str(OUT / "drpo"))
    settings = config.drpo
    before = evaluate_both(lambda p, s: policy.generate(p, seed=s), features)
    drift_space = DriftFeatures(features, SIZE)  # the CNN's features beside pooled pixels
    source = DrPOSource(training_prompts(), reward, drift_space, settings,
                        config.optim.batch_size, seed=config.optim.seed)
    started = time.perf_counter()
    result = make_trainer(config, policy, DrPOObjective(drift_space, settings), source,
                          log=log).train()
    minutes = (time.perf_counter() - started) / 60
    after = evaluate_both(lambda p, s: policy.generate(p, seed=s), features, "after")
    return {"base_loss": base.loss, "base_minutes": base_minutes, "minutes": minutes,
            **before, **after, "trained_on": sorted(set(base.seen) | set(source.prompts)),
            "curve": [h.get("samples/reward") for h in result.history]}


def run_diffusion_dpo(features, log) -> dict:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from dpokit.apps.worlds.image_shapes import (
        BaseTraining,
        prompts,
        reward,
        train_diffusion,
        training_prompts,
    )
    from dpokit.objectives import build_objective
    from dpokit.policies.diffusion import (
        DiffusionPairCollator,
        DiffusionPolicy,
        DiffusionSource,
        ImagePair,
        WordEncoder,
        apply_lora,
    )
    from dpokit.train import make_trainer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    encoder = WordEncoder(sorted({w for p in prompts() for w in p.split()[1:]}), dim=32,
                          length=2)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    started = time.perf_counter()
    base = train_diffusion(unet, encoder, scheduler, SIZE,
                           BaseTraining(S["diffusion"], learning_rate=1e-3))
    base_minutes = (time.perf_counter() - started) / 60
    encoder.requires_grad_(False)
    policy = DiffusionPolicy(apply_lora(unet, r=8, alpha=8), scheduler, encoder,
                             reference="adapter")

    def sample(p, seed):
        return policy.generate(p, steps=20, seed=seed)

    before = evaluate_both(sample, features)
    # pairs: for each training prompt and group of 8 seeds, the best and the worst base sample
    pairs, gaps = [], []
    for prompt in training_prompts():
        for group in range(S["groups"]):
            images = policy.generate([prompt] * 8, steps=20, seed=1000 + group,
                                     reference=True)  # 8 samples, one seeded batch
            scores = reward(images, [prompt] * 8)
            best, worst = int(scores.argmax()), int(scores.argmin())
            if scores[best] - scores[worst] > (0.0 if SMOKE else 0.05):
                pairs.append(ImagePair(len(pairs), prompt, images[best], images[worst]))
                gaps.append(float(scores[best] - scores[worst]))
    if not pairs:
        raise SystemExit("no pair: the base samples of every prompt got the same reward")
    config = _config("diffusion_dpo_shapes.yaml", max_steps=S["dpo"],
                     output_dir=str(OUT / "diffusion_dpo"))
    source = DiffusionSource(pairs, DiffusionPairCollator(num_timesteps=1000),
                             config.optim.batch_size, seed=config.optim.seed)
    started = time.perf_counter()
    result = make_trainer(config, policy, build_objective(config.loss), source, log=log).train()
    minutes = (time.perf_counter() - started) / 60
    after = evaluate_both(sample, features, "after")
    return {"base_loss": base.loss, "base_minutes": base_minutes, "minutes": minutes,
            "pairs": len(pairs), "mean_gap": sum(gaps) / max(1, len(gaps)),
            **before, **after, "trained_on": sorted(set(base.seen) | {p.prompt for p in pairs}),
            "curve": [h.get("rewards/accuracies") for h in result.history]}


def run() -> dict:
    from dpokit.apps.worlds.image_shapes import HELD_OUT, train_features, training_prompts

    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    features = train_features(SIZE, S["features"], among=training_prompts())
    log = print
    data = {"drpo": run_drpo(features, log), "diffusion_dpo": run_diffusion_dpo(features, log)}
    trained = set(training_prompts())  # the feature CNN's
    for result in data.values():
        trained |= set(result.pop("trained_on"))
    data["disjointness"] = [check_disjoint("prompts", HELD_OUT, trained)]
    grids = {}
    for method in ("drpo", "diffusion_dpo"):
        for stage in ("before", "after"):
            grids[f"{method}/{stage}"] = {
                **data[method][stage].pop("grid"),
                **data[method][f"{stage}_held_out"].pop("grid")}
    save_grid(grids)
    data["minutes"] = (time.perf_counter() - started) / 60
    return data


def save_grid(grids: dict) -> None:
    """Rows: method x before / after; columns: 4 samples of 4 prompts."""
    import torch

    plt = pyplot()
    rows = list(grids)
    chosen = ["a red circle", "a yellow square", "a red triangle", "a blue square"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 0.95 * len(rows)))
    for ax, row in zip(axes, rows, strict=True):
        tiles = torch.cat([grids[row][p] for p in chosen])  # (16, 3, H, W)
        strip = torch.cat(list(tiles), dim=2)  # (3, H, 16 W)
        ax.imshow(((strip.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
        ax.set_axis_off()
        ax.set_title(f"{row}: " + ", ".join(chosen) + " (the last two held out)",
                     fontsize=8)
    fig.savefig(results_dir() / "image_generators_samples.png", dpi=120, bbox_inches="tight")


def _improved(result: dict, held_out: bool = False) -> str:
    suffix = "_held_out" if held_out else ""
    before = result[f"before{suffix}"]["reward_by_prompt"]
    after = result[f"after{suffix}"]["reward_by_prompt"]
    return f"{sum(after[p] > before[p] for p in before)} of {len(before)}"


def write(data: dict) -> None:
    d, f = data["drpo"], data["diffusion_dpo"]

    def row(name: str, base: str, training: str, r: dict) -> str:
        return (f"| {name} | {base} | {training} | {r['before']['reward']:.3f} -> "
                f"{r['after']['reward']:.3f} ({_improved(r)}) | "
                f"{r['before_held_out']['reward']:.3f} -> {r['after_held_out']['reward']:.3f} "
                f"({_improved(r, True)}) | {r['before']['diversity']:.3f} -> "
                f"{r['after']['diversity']:.3f} |")

    lines = ["# Image generators: DrPO and Diffusion-DPO on a programmatic reward (16x16)", "",
             f"{data['minutes']:.0f} minutes in all. Reward in [0, 1] (colour match, shape "
             "match, sharpness); diversity: mean pairwise distance of one prompt's samples in "
             "the frozen CNN's feature space; 9 training prompts at new noise and 3 held-out "
             f"colour-shape combinations, {S['eval']} samples per prompt from fixed seeds "
             "(prompts improved in brackets). " + disjointness_line(data["disjointness"]), "",
             "| method | base training | preference training | reward, training prompts "
             "| reward, held-out prompts | diversity |", "|---|---|---|---|---|---|",
             row("DrPO (one-step generator)", f"IMLE, {d['base_minutes']:.1f} min",
                 f"{d['minutes']:.1f} min", d),
             row("Diffusion-DPO (UNet, LoRA)", f"DDPM, {f['base_minutes']:.1f} min",
                 f"{f['minutes']:.1f} min, {f['pairs']} pairs", f)]
    save_table("image_generators", lines)


def plot(data: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    curve = [c for c in data["drpo"]["curve"] if c is not None]
    axes[0].plot(range(1, len(curve) + 1), curve)
    axes[0].set_xlabel("DrPO step")
    axes[0].set_ylabel("mean reward of the step's samples")
    axes[0].set_title("DrPO: reward of the online samples")
    methods = ["drpo", "diffusion_dpo"]
    bars = [("before", "training prompts, before"), ("after", "training prompts, after"),
            ("before_held_out", "held-out prompts, before"),
            ("after_held_out", "held-out prompts, after")]
    for k, (stage, label) in enumerate(bars):
        axes[1].bar([i + 0.2 * k for i in range(2)],
                    [data[m][stage]["reward"] for m in methods], 0.2, label=label)
    axes[1].set_xticks([0.3, 1.3], ["DrPO", "Diffusion-DPO"])
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("mean reward (fixed evaluation seeds)")
    axes[1].legend(fontsize=7)
    fig.savefig(results_dir() / "image_generators.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    if SMOKE:
        OUT = OUT.parent / "image_generators_smoke"
        result = run()
        print(json.dumps({m: {s: result[m][s]["reward"] for s in
                              ("before", "after", "before_held_out", "after_held_out")}
                          for m in ("drpo", "diffusion_dpo")}))
    else:
        experiment("image_generators", run, write, plot)
