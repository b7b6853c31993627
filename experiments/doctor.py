"""`dpokit doctor` on runs built to go wrong in known ways, and on the quickstart as shipped.

Four short DPO + LoRA runs of the embedded SmolLM2-135M-Instruct, each through the command
line as a user runs it (`dpokit train quickstart ...`), then `dpokit doctor --json` on its
folder:

- quickstart: as shipped (160 pairs, 3 epochs), evaluated every 20 steps (its held-out chosen
  answers lose more likelihood than the margin they buy: likelihood displacement, which the
  checks saw once they read the held-out series);
- displacement: near-identical pairs (the rejected answer is the chosen one with its last
  word replaced) at a large learning rate;
- length: length-biased pairs (the chosen answer is two review sentences, the rejected one
  half a sentence), with the model's own samples measured at each evaluation;
- overfitting: 8 pairs for 30 epochs, held-out pairs evaluated every 3 steps.

Doctor must name each run's failure. Writes
``experiments/results/doctor.{json,md,png}``. ``--replot`` redraws from the JSON; ``--only
NAME`` runs one of them again; ``--recheck`` runs doctor again on the saved run folders.

    python experiments/doctor.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import ROOT, check_disjoint, disjointness_line, experiment, pyplot, results_dir

OUT = ROOT / "outputs" / "doctor"
TRAIN, HELD = "data/sentiment_pairs.train.jsonl", "data/sentiment_pairs.eval.jsonl"


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / path).read_text().splitlines() if line]


def _write(name: str, rows: list[dict]) -> str:
    path = OUT / "data" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path.relative_to(ROOT))


def near_identical(rows: list[dict]) -> list[dict]:
    """The chosen answer, and the same answer with its last word replaced by the rejected
    answer's last word: pairs that differ in one word at the end."""
    out = []
    for r in rows:
        words, other = r["chosen"].split(), r["rejected"].split()
        if len(words) > 3 and other and other[-1] != words[-1]:
            out.append({"prompt": r["prompt"], "chosen": r["chosen"],
                        "rejected": " ".join(words[:-1] + [other[-1]])})
    return out


def length_biased(rows: list[dict]) -> list[dict]:
    """Chosen: the chosen sentence and the next row's, joined; rejected: the first half of
    the rejected sentence. Longer always wins."""
    out = []
    for r, nxt in zip(rows, rows[1:] + rows[:1], strict=True):
        words = r["rejected"].split()
        out.append({"prompt": r["prompt"], "chosen": f"{r['chosen']} {nxt['chosen']}",
                    "rejected": " ".join(words[:max(3, len(words) // 2)])})
    return out


def runs() -> dict[str, dict]:
    """Each run: what it is built to show, the checks doctor must name, its overrides."""
    train = _rows(TRAIN)
    return {
        "quickstart": {"shows": "nothing on purpose (the quickstart as shipped: 3 epochs)",
                       "expect": ["likelihood_displacement"],
                    "args": [f"train_data={TRAIN}", f"eval_data={HELD}", "eval_every=20",
                             "eval_before=true"]},
        "displacement": {
            "shows": "near-identical pairs, learning rate 5e-3",
            "expect": ["likelihood_displacement"],
            "args": [f"train_data={_write('near_identical', near_identical(train)[:64])}",
                     f"eval_data={HELD}", "learning_rate=5e-3", "num_epochs=2",
                     "eval_every=8", "eval_before=true"]},
        "length": {
            "shows": "chosen answers always longer; own samples measured",
            "expect": ["data", "length_drift"],
            "args": [f"train_data={_write('length_biased', length_biased(train)[:96])}",
                     "eval_data=null", "eval_fraction=0", "num_epochs=2", "max_length=256",
                     "learning_rate=5e-4", "eval_prompts=data/review_prompts.eval.jsonl",
                     "eval_samples=1", "max_new_tokens=96", "temperature=0.7",
                     "eval_every=8", "eval_before=true"]},
        "overfitting": {
            "shows": "8 pairs, 30 epochs, held-out pairs every 3 steps",
            "expect": ["overfitting"],
            "args": [f"train_data={_write('few', train[:8])}", f"eval_data={HELD}",
                     "num_epochs=30", "learning_rate=3e-3", "eval_every=3",
                     "eval_before=true"]},
    }


def held_out() -> list[dict]:
    """Every run trains on sentences of the training pairs (reworked: one word swapped, two
    joined, halved); its held-out pairs are other sentences, the length run's prompts other
    prompts than the pairs' instructions."""
    train, held = _rows(TRAIN), _rows(HELD)
    sentences = {r[k] for r in train for k in ("chosen", "rejected")}
    return [check_disjoint("pair answers (sentences)",
                           {r[k] for r in held for k in ("chosen", "rejected")}, sentences),
            check_disjoint("prompts of own samples", {r["prompt"] for r in
                                                       _rows("data/review_prompts.eval.jsonl")},
                           {r["prompt"] for r in train})]


def run_one(name: str, spec: dict) -> dict:
    folder = OUT / name
    command = [sys.executable, "-m", "dpokit.cli", "train", "quickstart",
               f"output_dir={folder.relative_to(ROOT)}", "progress_bar=false", *spec["args"]]
    started = time.perf_counter()
    with (OUT / f"{name}.log").open("w") as log:
        subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - started) / 60
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"shows": spec["shows"], "expect": spec["expect"], "minutes": round(minutes, 2),
            "findings": doctor(name), "metrics": metrics}


def restore(name: str, spec: dict, metrics: list[dict]) -> None:
    """A run folder rebuilt from the saved JSON, for ``--recheck`` where the folder is gone:
    the run's metric rows as logged and its ``run.json`` (the recipe and the run's overrides,
    which name its data files, written again by :func:`runs`), so doctor reads what it read
    when the run ended."""
    from dpokit.config import load_config
    from dpokit.train.metrics import record_run

    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    cfg = load_config(str(ROOT / "src/dpokit/recipes/quickstart.yaml"),
                      [f"output_dir={folder.relative_to(ROOT)}", *spec["args"]])
    record_run(folder, cfg.to_dict(), cfg.loss.name)


def doctor(name: str) -> list[dict]:
    """`dpokit doctor --json` on the run's folder: its findings."""
    folder = OUT / name
    report = folder / "doctor.json"
    subprocess.run([sys.executable, "-m", "dpokit.cli", "doctor", str(folder), "--json",
                    str(report)], cwd=ROOT, check=True)
    return json.loads(report.read_text())[str(folder)]["findings"]


def compute() -> dict:
    """Every run, or with ``--only NAME`` that one again (the others kept from the JSON);
    ``--recheck``: no training, doctor again on the saved runs (after a check changed)."""
    import torch

    from dpokit.core.hardware import resolve

    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    saved = results_dir() / "doctor.json"
    if "--recheck" in sys.argv:
        data = json.loads(saved.read_text())
        specs = runs()
        for name, result in data["runs"].items():
            if not (OUT / name / "metrics.jsonl").is_file():
                restore(name, specs[name], result["metrics"])
            result["findings"] = doctor(name)
        data["rechecked"] = time.strftime("%Y-%m-%d")
        return data
    results = json.loads(saved.read_text())["runs"] if only else {}
    results.update({name: run_one(name, spec) for name, spec in runs().items()
                    if only in (None, name)})
    choice = resolve("auto", "auto")
    return {"hardware": f"{choice.line().removeprefix('hardware: ')}; "
                        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
            "runs": results}


def named(result: dict) -> list[str]:
    return sorted({f["check"] for f in result["findings"]})


def verdict(result: dict) -> bool:
    """Healthy: no finding. Built to fail: every expected check among the findings."""
    found = set(named(result))
    return not found if not result["expect"] else set(result["expect"]) <= found


def write(data: dict) -> None:
    from common import save_table

    lines = ["| run | built to go wrong by | doctor names | expected | as expected | minutes |",
             "|---|---|---|---|---|---|"]
    for name, r in data["runs"].items():
        lines.append(f"| {name} | {r['shows']} | {', '.join(named(r)) or 'no findings'} | "
                     f"{', '.join(r['expect']) or 'no findings'} | "
                     f"{'yes' if verdict(r) else 'NO'} | {r['minutes']:.1f} |")
    rechecked = (f" Findings re-checked on {data['rechecked']} (`--recheck`) by the current "
                 f"checks over the same runs' saved metrics; the minutes are the training "
                 f"runs'." if data.get("rechecked") else "")
    lines += ["", f"Hardware: {data['hardware']}.{rechecked}", "",
              disjointness_line(data.get("disjointness", [])), ""]
    for name, r in data["runs"].items():
        for f in r["findings"]:
            lines.append(f"- {name}: **{f['check']}** ({f['severity']}): {f['finding']}")
    save_table("doctor", lines)


def plot(data: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    panels = [("quickstart", "eval/rewards/chosen", "held-out chosen reward"),
              ("displacement", "rewards/chosen", "chosen reward (train)"),
              ("length", "eval/gen/length_tokens", "own samples' length (tokens)"),
              ("overfitting", "eval/loss", "held-out loss")]
    for ax, (name, key, label) in zip(axes, panels, strict=True):
        r = data["runs"][name]
        points = [(m["step"], m[key]) for m in r["metrics"] if key in m]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        if name == "displacement":
            margin = [(m["step"], m["rewards/margins"]) for m in r["metrics"]
                      if "rewards/margins" in m and not any(k.startswith("eval/") for k in m)]
            ax.plot([p[0] for p in margin], [p[1] for p in margin], marker=".", label="margin")
            ax.legend()
        ax.set_title(f"{name}: {', '.join(named(r)) or 'no findings'}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    fig.tight_layout()
    fig.savefig(results_dir() / "doctor.png", dpi=110)


if __name__ == "__main__":
    experiment("doctor", compute, write, plot, held_out)
