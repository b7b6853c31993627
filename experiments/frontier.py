"""The reward-vs-KL frontier of the DPO paper (Rafailov et al. 2023, Fig. 2, controlled
sentiment generation), small-scale on the embedded SmolLM2-135M-Instruct:

- prompts: the opening 4 words of real movie-review sentences (160 train, 40 held-out; the
  Pang & Lee sentences of data/sentiment_pairs), continued as raw text;
- ground-truth reward: the positive-class logit of a logistic head on all-MiniLM-L6-v2
  embeddings, trained on the 160 train sentences' human labels; its accuracy on the 40
  held-out sentences is measured and printed (VADER's too, for comparison);
- pairs: 4 samples per train prompt from the starting model, best vs worst under the reward;
- arms: the starting model, SFT on the preferred samples, DPO at beta 0.05 / 0.1 / 0.5, IPO,
  and best-of-N sampling (N = 2, 4, 8; KL = log N - (N-1)/N, the standard bound);
- each trained arm is measured at its checkpoints: mean reward of its own samples on the 40
  held-out prompts and the sequence-level KL to the starting model estimated from those
  samples (dpokit's eval figures).

Writes experiments/results/frontier.md and frontier.png.

    python experiments/frontier.py          # about 20 minutes on 2 CPU cores
    python experiments/frontier.py --held-out-only   # the held-out check alone, into the results
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from common import check_disjoint, disjointness_line, stamp_disjointness  # noqa: E402

from dpokit.cli import main as dpokit  # noqa: E402
from dpokit.data.builders import PromptRow, write_rows  # noqa: E402
from dpokit.eval.evaluate import generation_metrics  # noqa: E402
from dpokit.eval.metrics import Estimate  # noqa: E402
from dpokit.eval.rewards import load_reward, train_embedding_classifier  # noqa: E402
from dpokit.policies.causal_lm.models import load_causal_lm, load_tokenizer  # noqa: E402
from dpokit.policies.causal_lm.sampling import SamplingSettings, sample_completions  # noqa: E402
from dpokit.runs import load_policy  # noqa: E402

OUT = ROOT / "outputs" / "frontier"
RESULTS = ROOT / "experiments" / "results"
POSITIVE_PROMPTS = {"Write one sentence from a positive movie review.",
                    "In one sentence, praise a movie.",
                    "Give me a short, enthusiastic sentence about a film you liked."}
SAMPLE = dict(max_new_tokens=24, temperature=1.0, top_p=1.0, chat=False, batch_size=32)
EVAL_SAMPLES = 4
COMMON = ["lora=true", "mixed_precision=auto", "batch_size=8", "num_epochs=3",
          "lr_scheduler=constant", "max_length=64", "max_prompt_length=16", "eval_every=20",
          "eval_before=false", "eval_data=null", "progress_bar=false", "log_with=[]",
          "overwrite_output_dir=true", "chat_template_for_strings=false",
          f"eval_samples={EVAL_SAMPLES}", "online.max_new_tokens=24", "online.temperature=1.0",
          "online.sample_batch_size=32"]


def labelled(split: str) -> list[tuple[str, int]]:
    """(sentence, 1 positive / 0 negative) from the shipped pairs, each sentence once."""
    out: dict[str, int] = {}
    for line in (ROOT / "data" / f"sentiment_pairs.{split}.jsonl").read_text().splitlines():
        row = json.loads(line)
        pos = row["prompt"] in POSITIVE_PROMPTS
        out[row["chosen"]] = int(pos)
        out[row["rejected"]] = int(not pos)
    return list(out.items())


def opening(text: str, words: int = 4) -> str:
    return " ".join(text.split()[:words])


def held_out() -> list[dict]:
    """The reward head is scored on other sentences than it was fitted on; the arms are
    evaluated on other prompts (sentence openings) than their pairs were sampled from."""
    train, held = labelled("train"), labelled("eval")
    return [check_disjoint("sentences (reward head)", [t for t, _ in held],
                           [t for t, _ in train]),
            check_disjoint("prompts", [opening(t) for t, _ in held],
                           [opening(t) for t, _ in train])]


def main() -> None:
    checked = held_out()  # before any training: an overlap stops here
    if "--held-out-only" in sys.argv:  # a run from before the check: stamp its results
        return stamp_disjointness("frontier", checked)
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    train, held = labelled("train"), labelled("eval")
    head = str(OUT / "sentiment_head.pt")
    train_embedding_classifier([t for t, _ in train], [y for _, y in train], head)
    reward = load_reward(f"minilm-clf:{head}")
    logits = reward(["" for _ in held], [t for t, _ in held])
    accuracy = sum((s > 0) == bool(y) for s, (_, y) in zip(logits, held, strict=True)) / len(held)
    vader = load_reward("vader")(["" for _ in held], [t for t, _ in held])
    vader_acc = sum((s > 0) == bool(y) for s, (_, y) in zip(vader, held, strict=True)) / len(held)
    print(f"reward model: held-out accuracy {accuracy:.3f} (VADER {vader_acc:.3f})")

    prompts = [opening(t) for t, _ in train]
    eval_prompts = [opening(t) for t, _ in held]
    write_rows([{"prompt": p} for p in eval_prompts], OUT / "eval_prompts.jsonl")
    model, tokenizer = load_causal_lm("smollm2").eval(), load_tokenizer("smollm2")
    samples = sample_completions(model, tokenizer, prompts,
                                 SamplingSettings(num_samples=4, seed=0, **SAMPLE))
    pairs, sft_rows = [], []
    for prompt, group in zip(prompts, samples, strict=True):
        texts = [s.text for s in group]
        scores = reward([prompt] * len(texts), texts)
        best, worst = max(range(4), key=scores.__getitem__), min(range(4), key=scores.__getitem__)
        if scores[best] > scores[worst] and texts[best].strip() != texts[worst].strip():
            pairs.append({"prompt": prompt, "chosen": " " + texts[best],
                          "rejected": " " + texts[worst]})
            sft_rows.append({"prompt": prompt, "completion": " " + texts[best]})
    write_rows(pairs, OUT / "pairs.jsonl")
    write_rows(sft_rows, OUT / "sft.jsonl")
    print(f"{len(pairs)} pairs from {len(prompts)} prompts x 4 samples")

    spec = f"minilm-clf:{head}"
    points = []  # (arm, label, kl, kl_se, reward, reward_se)

    base = load_policy("smollm2", "smollm2")
    base_figs = generation_metrics(base, [PromptRow(p) for p in eval_prompts],
                                   SamplingSettings(num_samples=EVAL_SAMPLES, seed=10_000,
                                                    **SAMPLE), reward).metrics
    points.append(("start", "SmolLM2", 0.0, 0.0, base_figs["eval/gen/reward"],
                   base_figs["eval/gen/reward_se"]))
    del base

    # best-of-N from the starting model, 8 samples per held-out prompt
    group_samples = sample_completions(model, tokenizer, eval_prompts,
                                       SamplingSettings(num_samples=8, seed=20_000, **SAMPLE))
    scored = [reward([p] * 8, [s.text for s in g]) for p, g in zip(eval_prompts, group_samples,
                                                                    strict=True)]
    for n in (2, 4, 8):
        best = Estimate.of([max(s[:n]) for s in scored])
        points.append(("best-of-N", f"N={n}", math.log(n) - (n - 1) / n, 0.0, best.mean,
                       best.stderr))

    arms = [("DPO", "beta=0.05", ["loss=sigmoid", "beta=0.05"]),
            ("DPO", "beta=0.1", ["loss=sigmoid", "beta=0.1"]),
            ("DPO", "beta=0.5", ["loss=sigmoid", "beta=0.5"]),
            ("IPO", "beta=0.1", ["loss=ipo", "beta=0.1"])]
    for arm, label, extra in arms:
        out = OUT / f"{arm}-{label}"
        code = dpokit(["train", "model=smollm2", f"train_data={OUT / 'pairs.jsonl'}",
                       "learning_rate=5e-4", f"output_dir={out}",
                       f"run.eval_prompts={OUT / 'eval_prompts.jsonl'}", f"eval_reward={spec}",
                       *COMMON, *extra])
        if code:
            raise SystemExit(f"{arm} {label} failed")
        for line in (out / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "eval/gen/kl" in row:
                points.append((arm, f"{label} @ {row['step']}", row["eval/gen/kl"],
                               row["eval/gen/kl_se"], row["eval/gen/reward"],
                               row["eval/gen/reward_se"]))
    sft_out = OUT / "SFT"
    if dpokit(["sft", "model=smollm2", f"train_data={OUT / 'sft.jsonl'}", "learning_rate=5e-4",
               f"output_dir={sft_out}", *COMMON]):
        raise SystemExit("SFT failed")
    sft = load_policy(str(sft_out / "final"))  # reference: the adapter's base
    figs = generation_metrics(sft, [PromptRow(p) for p in eval_prompts],
                              SamplingSettings(num_samples=EVAL_SAMPLES, seed=10_000, **SAMPLE),
                              reward).metrics
    points.append(("SFT on preferred", "final", figs["eval/gen/kl"], figs["eval/gen/kl_se"],
                   figs["eval/gen/reward"], figs["eval/gen/reward_se"]))
    minutes = (time.perf_counter() - started) / 60
    write(points, accuracy, vader_acc, len(pairs), minutes, checked)
    print((RESULTS / "frontier.md").read_text())


def write(points, accuracy, vader_acc, n_pairs, minutes, checked) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# Reward vs KL frontier (Rafailov et al. 2023, Fig. 2), small-scale", "",
             f"SmolLM2-135M-Instruct continues the opening 4 words of 40 held-out real review "
             f"sentences (4 samples each, temperature 1). Reward: logit of a logistic head on "
             f"all-MiniLM-L6-v2 embeddings trained on 160 human-labelled sentences; held-out "
             f"accuracy {accuracy:.3f} (VADER: {vader_acc:.3f}). {n_pairs} training pairs "
             f"(best vs worst of 4 samples from the starting model). KL: sequence-level "
             f"KL(policy || start) estimated from the policy's own samples (± standard error); "
             f"best-of-N uses the bound log N - (N-1)/N.", "", disjointness_line(checked), "",
             "| arm | point | KL (nats) | reward |", "|---|---|---|---|"]
    for arm, label, kl, kl_se, rew, rew_se in points:
        lines.append(f"| {arm} | {label} | {kl:.3f} ± {kl_se:.3f} | {rew:+.3f} ± {rew_se:.3f} |")
    lines += ["", f"Run time: {minutes:.1f} min. Command: `python experiments/frontier.py`."]
    (RESULTS / "frontier.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "frontier.json").write_text(json.dumps({"results": points,
                                                       "disjointness": checked}, indent=1))
    plot(points)


def plot(points) -> None:
    """One line per arm and setting (a trained arm's checkpoints in step order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    series = dict.fromkeys(p[0] if p[0] in ("start", "best-of-N") else
                           f"{p[0]} {p[1].split(' @')[0]}" for p in points)
    for name in series:
        pts = [p for p in points if name in (p[0], f"{p[0]} {p[1].split(' @')[0]}")]
        ax.errorbar([p[2] for p in pts], [p[4] for p in pts], xerr=[p[3] for p in pts],
                    yerr=[p[5] for p in pts], marker="o", linestyle="-" if len(pts) > 1
                    else "none", capsize=2, label=name)
    ax.set_xlabel("KL(policy || starting model), nats per sample")
    ax.set_ylabel("held-out reward (sentiment logit)")
    ax.set_title("Reward vs KL, SmolLM2-135M, controlled sentiment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "frontier.png", dpi=120)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replot"]:  # redraw the PNG from frontier.json
        plot([tuple(p) for p in json.loads((RESULTS / "frontier.json").read_text())])
    else:
        torch.manual_seed(0)
        main()
