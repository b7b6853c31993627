"""Does DPO degrade embedding geometry, and does a style regularizer keep it? (Style TDI and
trajectory TDI of Rajput 2026, on the embedded SmolLM2-135M-Instruct.)

Arms, each the quickstart recipe (DPO + LoRA, 160 real sentiment pairs, 60 steps) with the
geometry monitor on the held-out probe contents (data/style_probes.eval.jsonl):

- ``dpo``: plain DPO;
- ``dpo+finite_difference``: DPO + the squared Style TDI of 3 train-probe contents per step
  (data/style_probes.train.jsonl, no content shared with the monitor's), weight 1;
- ``dpo+matched``: DPO + the paper's matched penalty, with its settings: noise whose covariance
  is that of the hidden states' style changes (after the middle decoder layer), truncated to
  rank 128, shrunk by 0.1, weight 0.7, capped at 30% of the step's task loss;
- ``dpo+input_matched``: DPO + dpokit's earlier form (noise shaped like the style changes of
  the input embeddings, full rank, no cap), weight 100.

For each: held-out preference accuracy and margin (40 pairs), both TDIs before and after
and along the way. The script checks that the held-out pairs and the monitor's probe
contents are disjoint from the training pairs and the regularizer's probes, and writes the
record. Writes experiments/results/style_tdi.{md,json,png}.

    python experiments/style_tdi.py            # about 35 minutes on 2 CPU cores
    python experiments/style_tdi.py --replot   # table and figure from style_tdi.json
    python experiments/style_tdi.py --reuse dpo,dpo+finite_difference  # read those arms'
                                               # finished runs in outputs/ instead of training
"""

from __future__ import annotations

import json
import sys
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

from dpokit.cli import main as dpokit  # noqa: E402

OUT = ROOT / "outputs" / "style_tdi"
PROBES = ROOT / "data" / "style_probes"
COMMON = ["eval_every=15", "eval_before=true", "progress_bar=false", "log_with=[]",
          f"geometry.probes={PROBES}.eval.jsonl", "geometry.regularizer_contents=3"]
ARMS = {
    "dpo": [],
    "dpo+finite_difference": ["geometry.regularizer=finite_difference",
                              "geometry.regularizer_weight=1.0",
                              f"geometry.regularizer_probes={PROBES}.train.jsonl"],
    "dpo+matched": ["geometry.regularizer=matched", "geometry.regularizer_weight=0.7",
                    "geometry.regularizer_cap=0.3",
                    f"geometry.regularizer_probes={PROBES}.train.jsonl"],
    "dpo+input_matched": ["geometry.regularizer=input_matched",
                          "geometry.regularizer_weight=100.0",
                          f"geometry.regularizer_probes={PROBES}.train.jsonl"],
}
KEYS = {"accuracy": "eval/rewards/accuracies", "margin": "eval/rewards/margins",
        "style_tdi": "eval/geometry/style_tdi", "trajectory_tdi": "eval/geometry/trajectory_tdi"}


def reused() -> set[str]:
    """``--reuse A,B``: arms whose finished runs are read back instead of trained again."""
    if "--reuse" not in sys.argv:
        return set()
    return set(sys.argv[sys.argv.index("--reuse") + 1].split(","))


def run_arm(name: str, overrides: list[str]) -> dict:
    out = OUT / name.replace("+", "_")
    started = time.perf_counter()
    if name in reused():  # its minutes: from the run folder's first file to its last metrics
        started -= (out / "metrics.jsonl").stat().st_mtime - (out / "run.json").stat().st_mtime
    else:
        code = dpokit(["train", "quickstart", f"output_dir={out}", *COMMON, *overrides])
        if code != 0:
            raise SystemExit(f"{name}: dpokit train exited {code}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if KEYS["style_tdi"] in r]
    penalty = [r["reg/style"] for r in rows if "reg/style" in r]
    capped = [r["reg/style_capped"] for r in rows if "reg/style_capped" in r]
    return {"minutes": (time.perf_counter() - started) / 60,
            "capped_share": sum(capped) / len(capped) if capped else None,
            "steps": [r["step"] for r in evals],
            **{k: [r.get(key) for r in evals] for k, key in KEYS.items()},
            "penalty_first_last": [penalty[0], penalty[-1]] if penalty else None}


def disjointness() -> list[dict]:
    """The held-out pairs' answers against the training pairs' (the six instructions are
    templates every pair shares, by design), the monitor's probe contents and texts against
    the regularizer's."""
    def rows(path):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    pairs = ROOT / "data" / "sentiment_pairs"
    monitor, regularizer = rows(Path(f"{PROBES}.eval.jsonl")), rows(Path(f"{PROBES}.train.jsonl"))
    def answers(path):
        return {r[side] for r in rows(path) for side in ("chosen", "rejected")}

    return [check_disjoint("pair answers (reviews)", answers(Path(f"{pairs}.eval.jsonl")),
                           answers(Path(f"{pairs}.train.jsonl"))),
            check_disjoint("probe contents", {r["content"] for r in monitor},
                           {r["content"] for r in regularizer}),
            check_disjoint("probe texts", {r["text"] for r in monitor},
                           {r["text"] for r in regularizer})]


def write(data: dict) -> None:
    arms = data["arms"]
    lines = ["# Style TDI and trajectory TDI under DPO (SmolLM2-135M-Instruct, LoRA, 60 steps)",
             "", "Held-out: 40 preference pairs; geometry on 40 probe contents (230 texts) "
             "never used by the regularizer. Lower TDI is better. "
             + disjointness_line(data["disjointness"]), "",
             "| arm | pref. acc. | margin | Style TDI before -> after (change) | trajectory "
             "TDI before -> after (change) | penalty first -> last | minutes |",
             "|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        s0, s1, t0, t1 = a["style_tdi"][0], a["style_tdi"][-1], a["trajectory_tdi"][0], \
            a["trajectory_tdi"][-1]
        pen = a["penalty_first_last"]
        pen_text = f"{pen[0]:.4f} -> {pen[1]:.4f}" if pen else "-"
        if a.get("capped_share") is not None:
            pen_text += f" (capped in {a['capped_share']:.0%} of steps)"
        lines.append(f"| {name} | {a['accuracy'][-1]:.3f} | {a['margin'][-1]:+.3f} | "
                     f"{s0:.4f} -> {s1:.4f} ({s1 / s0 - 1:+.1%}) | {t0:.3g} -> {t1:.3g} "
                     f"({t1 / t0 - 1:+.1%}) | {pen_text} | {a['minutes']:.1f} |")
    save_table("style_tdi", lines)


def plot(data: dict) -> None:
    arms = data["arms"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, a in arms.items():
        for ax, key in zip(axes, ("style_tdi", "trajectory_tdi", "accuracy"), strict=True):
            ax.plot(a["steps"], a[key], marker="o", label=name)
    titles = ("Style TDI (held-out probes, lower is better)", "trajectory TDI (sigma 0.01)",
              "held-out preference accuracy")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir() / "style_tdi.png", dpi=120)


def main() -> None:
    data = run_or_replot("style_tdi", lambda: {
        "disjointness": disjointness(),
        "arms": {name: run_arm(name, overrides) for name, overrides in ARMS.items()}})
    write(data)
    plot(data)


if __name__ == "__main__":
    main()
