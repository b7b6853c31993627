"""Where pairs come from, end to end on the embedded SmolLM2 and shipped real text:

    base --SFT (real review sentences)--> sample 6 answers per prompt, score (VADER signed by
    the requested polarity), pair best vs worst --DPO--> two iterative rounds (sample, score,
    pair, train; each round's model the next round's reference)

and the mean reward of the model's own samples on 16 held-out prompts after each stage (4
samples per prompt, the same seeds at every stage). Writes experiments/results/pairs_chain.md
and .png.

    python experiments/pairs_chain.py            # about 15 minutes on 2 CPU cores
    python experiments/pairs_chain.py --held-out-only   # the held-out check alone, into the results
    python experiments/pairs_chain.py --reward dpokit.eval.rewards:requested_sentiment \
        --name pairs_chain_unguarded              # the lexicon alone: watch it get hacked

The default reward is ``guarded:`` the lexicon: -1 for a sample the failure detectors flag
(repetition loop, cut off, empty). With the lexicon alone the reward climbs by repeating
"wonderful" (the unguarded table shows it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import check_disjoint, disjointness_line, stamp_disjointness  # noqa: E402

from dpokit.cli import main as dpokit  # noqa: E402
from dpokit.eval.rewards import load_reward  # noqa: E402
from dpokit.policies.causal_lm.sampling import SamplingSettings  # noqa: E402
from dpokit.runs import load_policy  # noqa: E402
from dpokit.runs.online import prompt_pool, sample_reward  # noqa: E402

OUT = ROOT / "outputs" / "chain"
RESULTS = ROOT / "experiments" / "results"
REWARD = "guarded:dpokit.eval.rewards:requested_sentiment"
TRAIN_PROMPTS = str(ROOT / "data" / "review_prompts.train.jsonl")
EVAL_PROMPTS = str(ROOT / "data" / "review_prompts.eval.jsonl")
SFT_ROWS = ROOT / "data" / "sft_reviews.train.jsonl"  # the sft_reviews recipe's train_data
SAMPLING = dict(num_samples=4, max_new_tokens=48, temperature=0.8, top_p=0.95, seed=10_000,
                batch_size=16)
COMMON = ["progress_bar=false", "chat_template_for_strings=true", "max_length=160",
          "max_prompt_length=96", "mixed_precision=auto", "batch_size=8", "lr_scheduler=cosine",
          "warmup_steps=2", "overwrite_output_dir=true", "log_with=[]"]


def measure(model_name: str, reward: str) -> dict:
    policy = load_policy(model_name)
    model, tokenizer = policy.model, policy.tokenizer
    est = sample_reward(model, tokenizer, prompt_pool(EVAL_PROMPTS), load_reward(reward),
                        SamplingSettings(**SAMPLING))
    return {"reward": est.mean, "se": est.stderr, "prompts": est.n,
            "failure_rate": est.failure_rate, "examples": est.examples}


def run(args: list[str]) -> float:
    started = time.perf_counter()
    code = dpokit(args)
    if code:
        raise SystemExit(f"dpokit {' '.join(args)} failed ({code})")
    return (time.perf_counter() - started) / 60


def held_out() -> list[dict]:
    """The held-out prompts against every prompt the chain trained on: the SFT rows' and the
    prompts it samples its pairs from (both DPO stages)."""
    def prompts(path: str | Path) -> set[str]:
        return {json.loads(x)["prompt"] for x in Path(path).read_text().splitlines() if x}

    return [check_disjoint("prompts", prompts(EVAL_PROMPTS),
                           prompts(TRAIN_PROMPTS) | prompts(SFT_ROWS))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward", default=REWARD)
    parser.add_argument("--name", default="pairs_chain", help="results file stem")
    parser.add_argument("--held-out-only", action="store_true",
                        help="the held-out check alone, written into the results files")
    args = parser.parse_args()
    checked = held_out()  # before any training: an overlap stops here
    if args.held_out_only:
        return stamp_disjointness(args.name, checked)
    reward, out = args.reward, OUT / args.name
    started = time.perf_counter()
    stages = []

    def stage(name: str, what: str, model: str, minutes: float) -> None:
        stages.append({"stage": name, "what": what, "minutes": minutes,
                       **measure(model, reward)})
        print(f"== {name}: mean reward {stages[-1]['reward']:+.4f} ± {stages[-1]['se']:.4f}")

    stage("base", "SmolLM2-135M-Instruct as shipped", "smollm2", 0.0)
    minutes = run(["sft", "sft_reviews", f"output_dir={out / 'sft'}", "progress_bar=false"])
    stage("SFT", "LoRA SFT on 160 real review sentences", str(out / "sft" / "final"), minutes)

    minutes = run(["pairs", "sample", TRAIN_PROMPTS, "--model", str(out / "sft" / "final"),
                   "--reward", reward, "--num-samples", "6", "--temperature", "0.8",
                   "--top-p", "0.95", "--max-new-tokens", "48", "--out",
                   str(out / "sampled_pairs.jsonl")])
    minutes += run(["train", f"model={out / 'sft' / 'final'}",
                    f"train_data={out / 'sampled_pairs.jsonl'}", "eval_data=null",
                    "loss=sigmoid", "beta=0.1", "learning_rate=5e-4", "num_epochs=3",
                    f"output_dir={out / 'dpo'}", *COMMON])
    stage("DPO", "DPO on pairs from the SFT model's samples (40 prompts x 6 samples, best vs "
          "worst)", str(out / "dpo" / "final"), minutes)

    minutes = run(["train", "iterative_reviews", f"model={out / 'dpo' / 'final'}",
                   f"output_dir={out / 'iterative'}", "online.iterations=2",
                   f"online.prompts={TRAIN_PROMPTS}", f"run.eval_prompts={EVAL_PROMPTS}",
                   f"online.reward={reward}",
                   "progress_bar=false", "log_with=[]"])
    rounds = [json.loads(x) for x in (out / "iterative" / "iterations.jsonl").read_text()
              .splitlines()]
    stage("iterative", "2 rounds of sample -> score -> pair -> DPO, each round's model the "
          "next reference", str(out / "iterative" / "final"), minutes)
    total = (time.perf_counter() - started) / 60
    write(args.name, reward, stages, rounds, total, checked)


def write(name: str, reward: str, stages: list[dict], rounds: list[dict], total: float,
          checked: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# Pairs from the model's own samples: SFT -> sampled pairs -> DPO -> iterative DPO",
             "", f"Reward `{reward}` (VADER compound signed by the requested polarity, in [-1, "
             "1]; `guarded:` gives -1 to a sample the failure detectors flag) of the model's "
             "own samples on 16 held-out prompts (other film kinds, other phrasing), 4 samples "
             "each at temperature 0.8, the same seeds at every stage; ± is the standard error "
             "over prompts. Degenerate: share of those samples flagged as a repetition loop, "
             "cut off at 48 tokens, or empty. Embedded SmolLM2-135M-Instruct, LoRA, 2 CPU "
             "cores.", "", disjointness_line(checked), "",
             "| stage | what | held-out reward | degenerate | minutes |",
             "|---|---|---|---|---|"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['what']} | {s['reward']:+.3f} ± {s['se']:.3f} | "
                     f"{s['failure_rate']:.0%} | {s['minutes']:.1f} |")
    lines += ["", "Inside the iterative run (`iterations.jsonl`, measured by the trainer on the "
              "same prompts and seeds, base weights in bf16):", "",
              "| round | held-out reward | degenerate | pairs trained on |", "|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['eval/sample_reward']:+.3f} ± "
                     f"{r['eval/sample_reward_se']:.3f} | {r['eval/sample_failure_rate']:.0%} | "
                     f"{r.get('pairs', '-')} |")
    lines += ["", "First sample (temperature 0.8) for the first held-out prompts, by stage:", ""]
    for s in stages:
        for prompt, text in s["examples"][:2]:
            lines.append(f"- {s['stage']}: *{prompt}* -> {text[:160]!r}")
    lines += ["", f"Whole chain: {total:.1f} min. Command: `python experiments/pairs_chain.py"
              + (f" --reward {reward} --name {name}`." if name != "pairs_chain" else "`.")]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = [s["stage"] for s in stages]
    ax.errorbar(range(len(stages)), [s["reward"] for s in stages],
                yerr=[s["se"] for s in stages], marker="o", capsize=4)
    ax.set_xticks(range(len(stages)), names)
    ax.set_ylabel("held-out reward of own samples")
    ax.set_title(f"SmolLM2-135M, reward {reward.split(':')[0]}: SFT, DPO, iterative DPO",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
