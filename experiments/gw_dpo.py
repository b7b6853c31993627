"""Gravity-Weighted DPO on the instruction hierarchy (Bolliger and Jaeger 2026), small-scale on
the embedded SmolLM2-135M-Instruct.

Data: data/hierarchy_pairs.{train,eval}.jsonl (src/dpokit/apps/gw_dpo/build_data.py): 135 training
rows from 9 tasks (conflicts for every level pair, benign and aligned samples), 276 held-out
rows from 3 other tasks (24 conflicts per cell of the 5 x 5 adherence matrix). Arms, each
LoRA on the instruct model: base (no training), SFT on the chosen answers, DPO (sigmoid),
GW-DPO linear and GW-DPO bilateral (offset 1 per unit of gravity, weight 1). Each arm answers
every held-out prompt greedily (64 new tokens); a program grades the answers: pairwise
adherence, its macro average, over-refusal on benign prompts, utility on aligned ones.
Writes experiments/results/gw_dpo.{md,json,png}.

    python experiments/gw_dpo.py              # about 55 minutes here on 1 shared CPU thread
    python experiments/gw_dpo.py --replot
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import (  # noqa: E402
    ROOT,
    check_disjoint,
    disjointness_line,
    pyplot,
    results_dir,
    run_or_replot,
    save_table,
)

from dpokit.apps.gw_dpo.hierarchy import LEVELS, HierarchySample, Message, evaluate_answers  # noqa: E402
from dpokit.cli import main as dpokit  # noqa: E402

OUT = ROOT / "outputs" / "gw_dpo"
DATA = ROOT / "data" / "hierarchy_pairs"
COMMON = ["lora=true", "mixed_precision=auto", "batch_size=8", "num_epochs=2",
          "lr_scheduler=cosine", "warmup_steps=4", "max_length=320", "max_prompt_length=192",
          "eval_before=false", "progress_bar=false", "log_with=[]", "overwrite_output_dir=true",
          f"eval_data={DATA}.eval.jsonl"]
GW = ["loss.gw_offset=1.0", "loss.gw_weight=1.0"]
ARMS = {"DPO": ["loss.name=sigmoid"], "GW-DPO linear": ["loss.name=gw_linear", *GW],
        "GW-DPO bilateral": ["loss.name=gw_bilateral", *GW]}


def held_out() -> tuple[list[dict], list[HierarchySample]]:
    rows = [json.loads(line) for line in Path(f"{DATA}.eval.jsonl").read_text().splitlines()]
    samples = [HierarchySample(r["kind"], [Message(0, "")], "", r["constraint"],
                               r["level_obeyed"], r["level_overridden"], r["chosen"],
                               r["rejected"]) for r in rows]
    return rows, samples


def disjointness() -> list[dict]:
    """The held-out rows' tasks (the 'Task:' line) against the training rows'."""
    def tasks(split: str) -> set[str]:
        rows = [json.loads(line) for line in Path(f"{DATA}.{split}.jsonl").read_text().splitlines()]
        return {m["content"].rsplit("Task: ", 1)[1] for r in rows for m in r["prompt"]
                if "Task: " in m["content"]}

    return [check_disjoint("tasks", tasks("eval"), tasks("train"))]


def answers_of(model_path: str, prompts: list) -> list[str]:
    from dpokit.policies.causal_lm.sampling import SamplingSettings, sample_completions
    from dpokit.runs import load_policy

    policy = load_policy(model_path)
    settings = SamplingSettings(num_samples=1, max_new_tokens=64, temperature=0.0,
                                batch_size=24)
    return [g[0].text for g in sample_completions(policy.model, policy.tokenizer, prompts,
                                                  settings)]


def train_arms() -> dict[str, str]:
    models = {"base": "smollm2"}
    sft_rows = OUT / "sft_rows.jsonl"
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(f"{DATA}.train.jsonl").read_text().splitlines()]
    sft_rows.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]})
                                + "\n" for r in rows))
    code = dpokit(["sft", f"train_data={sft_rows}", "eval_data=null", "learning_rate=1e-3",
                   f"output_dir={OUT / 'sft'}", *[c for c in COMMON if "eval_data" not in c]])
    if code:
        raise SystemExit(f"sft exited {code}")
    models["SFT"] = str(OUT / "sft" / "final")
    for name, overrides in ARMS.items():
        out = OUT / name.replace(" ", "_")
        code = dpokit(["train", f"train_data={DATA}.train.jsonl", "learning_rate=1e-3",
                       f"output_dir={out}", *COMMON, *overrides])
        if code:
            raise SystemExit(f"{name} exited {code}")
        models[name] = str(out / "final")
    return models


def write(data: dict) -> None:
    lines = ["# Gravity-Weighted DPO on the instruction hierarchy (SmolLM2-135M-Instruct, LoRA)",
             "", f"Held-out: 3 tasks never trained on; {data['counts']}. {data['minutes']:.0f} "
             "minutes. " + disjointness_line(data.get("disjointness", [])), "",
             "| arm | macro adherence | adherence, adjacent levels | adherence, gap >= 3 | "
             "over-refusal (benign: refusals) | benign non-compliance (refusal or constraint "
             "missed) | utility (aligned) |", "|---|---|---|---|---|---|---|"]
    for name, r in data["arms"].items():
        m = r["adherence"]
        near = [m[i][i + 1] for i in range(len(m) - 1)]
        far = [m[i][j] for i in range(len(m)) for j in range(i + 3, len(m))]
        if "benign_non_compliance" in r:
            refusals, missed = f"{r['over_refusal']:.3f}", f"{r['benign_non_compliance']:.3f}"
        else:  # a results file from before the split: its over_refusal was non-compliance
            refusals, missed = "-", f"{r['over_refusal']:.3f}"
        lines.append(f"| {name} | {r['macro']:.3f} | {sum(near) / len(near):.3f} | "
                     f"{sum(far) / len(far):.3f} | {refusals} | {missed} | "
                     f"{r['aligned_utility']:.3f} |")
    save_table("gw_dpo", lines)


def plot(data: dict) -> None:
    plt = pyplot()
    names = list(data["arms"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4))
    for ax, name in zip(axes, names, strict=True):
        m = data["arms"][name]["adherence"]
        grid = [[float("nan") if v is None else v for v in row] for row in m]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{name}\nmacro {data['arms'][name]['macro']:.2f}", fontsize=9)
        ax.set_xticks(range(len(LEVELS)), [x.split()[0] for x in LEVELS], rotation=45,
                      fontsize=7)
        ax.set_yticks(range(len(LEVELS)), [x.split()[0] for x in LEVELS], fontsize=7)
        ax.set_xlabel("overridden level", fontsize=8)
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.5 else "black")
    axes[0].set_ylabel("obeyed level", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.7)
    fig.savefig(results_dir() / "gw_dpo.png", dpi=120, bbox_inches="tight")


def run() -> dict:
    started = time.perf_counter()
    rows, samples = held_out()
    prompts = [r["prompt"] for r in rows]
    data: dict = {"arms": {}, "disjointness": disjointness()}
    for name, model in train_arms().items():
        report = evaluate_answers(samples, answers_of(model, prompts))
        data["arms"][name] = {"adherence": report.adherence, "macro": report.macro,
                              "over_refusal": report.over_refusal,
                              "benign_non_compliance": report.benign_non_compliance,
                              "aligned_utility": report.aligned_utility}
        data["counts"] = report.counts
        print(f"{name}: macro adherence {report.macro:.3f}, over-refusal "
              f"{report.over_refusal:.3f}, aligned utility {report.aligned_utility:.3f}",
              flush=True)
    data["minutes"] = (time.perf_counter() - started) / 60
    return data


def main() -> None:
    data = run_or_replot("gw_dpo", run)
    write(data)
    plot(data)


if __name__ == "__main__":
    main()
