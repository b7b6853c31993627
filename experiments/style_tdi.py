"""Does DPO degrade embedding geometry, and does a style regularizer keep it? (Style TDI and
trajectory TDI of Rajput 2026, on the embedded SmolLM2-135M-Instruct.)

Arms, each the quickstart recipe (DPO + LoRA, 160 real sentiment pairs, 60 steps) with the
geometry monitor on the held-out probe contents (data/style_probes.eval.jsonl):

- ``dpo``: plain DPO;
- ``dpo+finite_difference``: DPO + the squared Style TDI of 3 train-probe contents per step
  (data/style_probes.train.jsonl, no content shared with the monitor's), weight 1;
- ``dpo+matched``: DPO + the trajectory response to noise shaped like style changes, weight 100.

For each: held-out preference accuracy and margin (40 pairs), both TDIs before and after
and along the way. Writes experiments/results/style_tdi.{md,json,png}.

    python experiments/style_tdi.py            # about 25 minutes on 2 CPU cores
    python experiments/style_tdi.py --replot   # table and figure from style_tdi.json
"""

from __future__ import annotations

import json
import time

from common import ROOT, pyplot, results_dir, run_or_replot, save_table  # noqa: E402

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
    "dpo+matched": ["geometry.regularizer=matched", "geometry.regularizer_weight=100.0",
                    f"geometry.regularizer_probes={PROBES}.train.jsonl"],
}
KEYS = {"accuracy": "eval/rewards/accuracies", "margin": "eval/rewards/margins",
        "style_tdi": "eval/geometry/style_tdi", "trajectory_tdi": "eval/geometry/trajectory_tdi"}


def run_arm(name: str, overrides: list[str]) -> dict:
    out = OUT / name.replace("+", "_")
    started = time.perf_counter()
    code = dpokit(["train", "quickstart", f"output_dir={out}", *COMMON, *overrides])
    if code != 0:
        raise SystemExit(f"{name}: dpokit train exited {code}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if KEYS["style_tdi"] in r]
    penalty = [r["reg/style"] for r in rows if "reg/style" in r]
    return {"minutes": (time.perf_counter() - started) / 60,
            "steps": [r["step"] for r in evals],
            **{k: [r.get(key) for r in evals] for k, key in KEYS.items()},
            "penalty_first_last": [penalty[0], penalty[-1]] if penalty else None}


def write(arms: dict) -> None:
    lines = ["# Style TDI and trajectory TDI under DPO (SmolLM2-135M-Instruct, LoRA, 60 steps)",
             "", "Held-out: 40 preference pairs; geometry on 40 probe contents (230 texts) "
             "never used by the regularizer. Lower TDI is better.", "",
             "| arm | pref. acc. | margin | Style TDI before -> after (change) | trajectory "
             "TDI before -> after (change) | penalty first -> last | minutes |",
             "|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        s0, s1, t0, t1 = a["style_tdi"][0], a["style_tdi"][-1], a["trajectory_tdi"][0], \
            a["trajectory_tdi"][-1]
        pen = a["penalty_first_last"]
        pen_text = f"{pen[0]:.4f} -> {pen[1]:.4f}" if pen else "-"
        lines.append(f"| {name} | {a['accuracy'][-1]:.3f} | {a['margin'][-1]:+.3f} | "
                     f"{s0:.4f} -> {s1:.4f} ({s1 / s0 - 1:+.1%}) | {t0:.3g} -> {t1:.3g} "
                     f"({t1 / t0 - 1:+.1%}) | {pen_text} | {a['minutes']:.1f} |")
    save_table("style_tdi", lines)


def plot(arms: dict) -> None:
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
    arms = run_or_replot("style_tdi", lambda: {name: run_arm(name, overrides)
                                               for name, overrides in ARMS.items()})
    write(arms)
    plot(arms)


if __name__ == "__main__":
    main()
