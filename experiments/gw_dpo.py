"""Gravity-Weighted DPO on the instruction hierarchy (Bolliger and Jaeger 2026), small-scale on
the embedded SmolLM2-135M-Instruct.

Data: data/hierarchy_pairs.{train,eval}.jsonl (src/dpokit/apps/gw_dpo/build_data.py): 135 training
rows from 9 tasks (conflicts for every level pair, benign and aligned samples), 276 held-out
rows from 3 other tasks (24 conflicts per cell of the 5 x 5 adherence matrix). Arms, each
LoRA on the instruct model: base (no training), SFT on the chosen answers, DPO (sigmoid),
GW-DPO linear and GW-DPO bilateral (offset 1 per unit of gravity, weight 1); then the
instruction-hierarchy paper's Instructional Segment Embeddings: GW-DPO bilateral with the
levels as delimiter tokens (new tokens, frozen embeddings under LoRA), and with a learned
embedding per level added to every token of it (``model.segment_tokens``; the template and
the answer: segment 0); and the depth ablation: DPO and GW-DPO bilateral trained and
evaluated on a 3-level hierarchy (platform, system, user) built the same way, against the
5-level arms on the same cells. Each arm answers every held-out prompt greedily (64 new
tokens); a program grades the answers: pairwise adherence, its macro average, over-refusal
on benign prompts (refusals alone, and non-compliance: a refusal or the constraint missed),
utility on aligned ones. Writes experiments/results/gw_dpo.{md,json,png}; the JSON after
every arm.

    python experiments/gw_dpo.py              # about 90 minutes on 2 CPU cores (9 arms)
    python experiments/gw_dpo.py --reuse      # keep the arms the JSON has, run the others
    python experiments/gw_dpo.py --reuse --arms "DPO,GW-DPO bilateral"   # only these
    python experiments/gw_dpo.py --replot
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (  # noqa: E402
    ROOT,
    base_with_tokens,
    check_disjoint,
    disjointness_line,
    pyplot,
    results_dir,
    save_table,
)

from dpokit.apps.gw_dpo.build_data import rows as hierarchy_rows  # noqa: E402
from dpokit.apps.gw_dpo.hierarchy import (  # noqa: E402
    LEVEL_TOKENS,
    LEVELS,
    HierarchySample,
    Message,
    evaluate_answers,
    with_level_tokens,
)
from dpokit.cli import main as dpokit  # noqa: E402

OUT = ROOT / "outputs" / "gw_dpo"
DATA = ROOT / "data" / "hierarchy_pairs"
COMMON = ["lora=true", "mixed_precision=auto", "batch_size=8", "num_epochs=2",
          "lr_scheduler=cosine", "warmup_steps=4", "max_length=320", "max_prompt_length=192",
          "eval_before=false", "progress_bar=false", "log_with=[]", "overwrite_output_dir=true",
          "learning_rate=1e-3"]
GRAVITY = ["loss.gw_offset=1.0", "loss.gw_weight=1.0"]
GW = ["loss.name=gw_bilateral", *GRAVITY]
ISE = [f"model.segment_tokens=[{','.join(LEVEL_TOKENS)}]",
       "model.segment_reset_tokens=[<|im_start|>]"]


@dataclass
class Arm:
    """How an arm trains (none: the base model) and which rows it trains and is graded on:
    ``data`` 'text' (the files), 'tokens' (their tags as level tokens) or '3 levels'."""

    train: str | None = "train"  # dpokit command
    overrides: list[str] = field(default_factory=list)
    data: str = "text"
    level_base: bool = False  # SmolLM2 with the level tokens added


ARMS = {
    "base": Arm(train=None),
    "SFT": Arm(train="sft"),
    "DPO": Arm(overrides=["loss.name=sigmoid"]),
    "GW-DPO linear": Arm(overrides=["loss.name=gw_linear", *GRAVITY]),
    "GW-DPO bilateral": Arm(overrides=GW),
    "GW-DPO bilateral + level tokens": Arm(overrides=GW, data="tokens", level_base=True),
    "GW-DPO bilateral + ISE": Arm(overrides=[*GW, *ISE], data="tokens", level_base=True),
    "DPO, 3 levels": Arm(overrides=["loss.name=sigmoid"], data="3 levels"),
    "GW-DPO bilateral, 3 levels": Arm(overrides=GW, data="3 levels"),
}


def rows_of(data: str, split: str) -> list[dict]:
    if data == "3 levels":
        return hierarchy_rows(split, levels=3)
    rows = [json.loads(line) for line in Path(f"{DATA}.{split}.jsonl").read_text().splitlines()]
    if data == "tokens":
        rows = [{**r, "prompt": with_level_tokens(r["prompt"])} for r in rows]
    return rows


def data_file(data: str, split: str) -> str:
    if data == "text":
        return f"{DATA}.{split}.jsonl"
    path = OUT / f"rows-{data.replace(' ', '_')}.{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_of(data, split)))
    return str(path)


def samples_of(rows: list[dict]) -> list[HierarchySample]:
    return [HierarchySample(r["kind"], [Message(0, "")], "", r["constraint"],
                            r["level_obeyed"], r["level_overridden"], r["chosen"],
                            r["rejected"]) for r in rows]


def disjointness() -> list[dict]:
    """The held-out rows' tasks (the 'Task:' line) against the training rows', for the
    5-level files and the 3-level rows."""
    def tasks(rows: list[dict]) -> set[str]:
        return {m["content"].rsplit("Task: ", 1)[1] for r in rows for m in r["prompt"]
                if "Task: " in m["content"]}

    return [check_disjoint("tasks", tasks(rows_of("text", "eval")),
                           tasks(rows_of("text", "train"))),
            check_disjoint("tasks (3 levels)", tasks(rows_of("3 levels", "eval")),
                           tasks(rows_of("3 levels", "train")))]


def level_base() -> str:
    """SmolLM2 with the five level tokens added (each starting at its level's name)."""
    from dpokit.apps.gw_dpo.hierarchy import add_level_tokens

    return base_with_tokens(OUT / "base-levels", add_level_tokens)


def train(name: str, arm: Arm) -> str:
    """The arm's model folder (trained here, or the base)."""
    if arm.train is None:
        return "smollm2"
    out = OUT / name.replace(" ", "_").replace(",", "")
    model = [f"model.name={level_base()}"] if arm.level_base else []
    if arm.train == "sft":
        sft_rows = OUT / "sft_rows.jsonl"
        sft_rows.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]})
                                    + "\n" for r in rows_of(arm.data, "train")))
        args = ["sft", f"train_data={sft_rows}", "eval_data=null"]
    else:
        args = ["train", f"train_data={data_file(arm.data, 'train')}",
                f"eval_data={data_file(arm.data, 'eval')}"]
    code = dpokit([*args, f"output_dir={out}", *COMMON, *model, *arm.overrides])
    if code:
        raise SystemExit(f"{name} exited {code}")
    return str(out / "final")


def answers_of(model_path: str, prompts: list) -> list[str]:
    from dpokit.policies.causal_lm.sampling import SamplingSettings, sample_completions
    from dpokit.runs import load_policy

    policy = load_policy(model_path)
    settings = SamplingSettings(num_samples=1, max_new_tokens=64, temperature=0.0,
                                batch_size=24)
    return [g[0].text for g in sample_completions(policy.model, policy.tokenizer, prompts,
                                                  settings)]


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _cells(m: list, levels: int) -> list:
    """The adherence of every (obeyed i < overridden j) cell among the first ``levels``."""
    return [m[i][j] for i in range(levels) for j in range(i + 1, levels)]


def write(data: dict) -> None:
    five = {n: r for n, r in data["arms"].items() if r.get("data") != "3 levels"}
    three = {n: r for n, r in data["arms"].items() if r.get("data") == "3 levels"}
    counts = next(iter(five.values()), {}).get("counts", data.get("counts"))
    lines = ["# Gravity-Weighted DPO on the instruction hierarchy (SmolLM2-135M-Instruct, LoRA)",
             "", f"Held-out: 3 tasks never trained on; {counts}. {data['minutes']:.0f} "
             "minutes. " + disjointness_line(data.get("disjointness", [])), "",
             "| arm | macro adherence | adherence, adjacent levels | adherence, gap >= 3 | "
             "over-refusal (benign: refusals) | benign non-compliance (refusal or constraint "
             "missed) | utility (aligned) |", "|---|---|---|---|---|---|---|"]
    for name, r in five.items():
        m = r["adherence"]
        near = [m[i][i + 1] for i in range(len(m) - 1)]
        far = [m[i][j] for i in range(len(m)) for j in range(i + 3, len(m))]
        if "benign_non_compliance" in r:
            refusals, missed = f"{r['over_refusal']:.3f}", f"{r['benign_non_compliance']:.3f}"
        else:  # a results file from before the split: its over_refusal was non-compliance
            refusals, missed = "-", f"{r['over_refusal']:.3f}"
        lines.append(f"| {name} | {r['macro']:.3f} | {_mean(near):.3f} | {_mean(far):.3f} | "
                     f"{refusals} | {missed} | {r['aligned_utility']:.3f} |")
    if three:
        lines += ["", "Depth ablation: the same recipe on a 3-level hierarchy (platform, system, "
                  "user; trained and graded on 3-level rows of the same tasks), against the "
                  "5-level arms on the same three cells (the same 24 conflicts each):", "",
                  "| arm | trained on | adherence, the 3 cells among levels 0-2 | over-refusal "
                  "| benign non-compliance | utility (aligned) |", "|---|---|---|---|---|---|"]
        for name, r in [*((n, five[n]) for n in ("DPO", "GW-DPO bilateral") if n in five),
                        *three.items()]:
            lines.append(f"| {name} | {'3' if name in three else '5'} levels | "
                         f"{_mean(_cells(r['adherence'], 3)):.3f} | {r['over_refusal']:.3f} | "
                         f"{r['benign_non_compliance']:.3f} | {r['aligned_utility']:.3f} |")
    save_table("gw_dpo", lines)


def plot(data: dict) -> None:
    plt = pyplot()
    names = list(data["arms"])
    cols = min(3, len(names))  # (one arm too: --arms)
    rows = -(-len(names) // cols)
    fig, grid_axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.9 * rows), squeeze=False,
                                 gridspec_kw={"hspace": 0.55})
    axes = grid_axes.ravel()
    for ax in axes[len(names):]:
        ax.axis("off")
    level_names = [x.split()[0] for x in LEVELS]  # (3 levels: the first three cells filled)
    for k, (ax, name) in enumerate(zip(axes, names, strict=False)):
        m = data["arms"][name]["adherence"]
        grid = [[float("nan") if v is None else v for v in row] for row in m]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{name}\nmacro {data['arms'][name]['macro']:.2f}", fontsize=9)
        ax.set_xticks(range(len(LEVELS)), level_names, rotation=45, fontsize=7)
        ax.set_yticks(range(len(LEVELS)), level_names if k % cols == 0 else [], fontsize=7)
        ax.set_xlabel("overridden level", fontsize=8)
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.5 else "black")
    for ax in grid_axes[:, 0]:
        ax.set_ylabel("obeyed level", fontsize=8)
    fig.colorbar(image, ax=axes[:len(names)], shrink=0.7)
    fig.savefig(results_dir() / "gw_dpo.png", dpi=120, bbox_inches="tight")


def run() -> dict:
    """Every arm not in the saved JSON (all without ``--reuse``), the JSON written after each."""
    path = results_dir() / "gw_dpo.json"
    data = json.loads(path.read_text()) if "--reuse" in sys.argv and path.is_file() else {}
    # an arm from before this version (no "data": graded with over-refusal and
    # non-compliance as one figure) is run again
    data["arms"] = {n: a for n, a in data.get("arms", {}).items() if "data" in a}
    data["disjointness"] = disjointness()  # before any training: an overlap stops here
    OUT.mkdir(parents=True, exist_ok=True)  # a fresh clone has no outputs/
    only = sys.argv[sys.argv.index("--arms") + 1].split(",") if "--arms" in sys.argv else None
    unknown = set(only or []) - set(ARMS)
    if unknown:
        raise SystemExit(f"--arms: unknown {sorted(unknown)}; the arms: {list(ARMS)}")
    for name in only or ARMS:
        arm = ARMS[name]
        if name in data["arms"]:
            continue
        started = time.perf_counter()
        rows = rows_of(arm.data, "eval")
        report = evaluate_answers(samples_of(rows),
                                  answers_of(train(name, arm), [r["prompt"] for r in rows]))
        data["arms"][name] = {"adherence": report.adherence, "macro": report.macro,
                              "over_refusal": report.over_refusal,
                              "benign_non_compliance": report.benign_non_compliance,
                              "aligned_utility": report.aligned_utility,
                              "counts": report.counts, "data": arm.data,
                              "minutes": (time.perf_counter() - started) / 60}
        print(f"{name}: macro adherence {report.macro:.3f}, over-refusal "
              f"{report.over_refusal:.3f}, aligned utility {report.aligned_utility:.3f}",
              flush=True)
        path.write_text(json.dumps(data, indent=1))
    data["arms"] = {n: data["arms"][n] for n in ARMS if n in data["arms"]}  # table order
    data["minutes"] = sum(a.get("minutes", 0.0) for a in data["arms"].values())
    path.write_text(json.dumps(data, indent=1))
    return data


def main() -> None:
    path = results_dir() / "gw_dpo.json"
    data = json.loads(path.read_text()) if "--replot" in sys.argv else run()
    write(data)
    plot(data)


if __name__ == "__main__":
    main()
