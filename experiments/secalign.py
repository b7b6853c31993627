"""SecAlign (Chen et al. 2025) small-scale on the embedded SmolLM2-135M-Instruct: do reserved
delimiters (StruQ) and then DPO on injected pairs (SecAlign) make the model ignore
instructions injected into its data, and what does it cost in utility?

Data: data/secalign_tasks.{train,eval}.jsonl (src/dpokit/apps/secalign/build_data.py): 560 training
tasks (7 program-graded families over news sentences and fortunes, WordNet definitions,
"print exactly" tasks), 64 held-out tasks over texts never trained on. Arms:

- undefended: full SFT on the clean tasks in the textual format (`### instruction:` ...);
- StruQ: the delimiters reserved as new tokens, data filtered, full SFT on StruQ rows (half
  of the samples carry an injected instruction; the target is the real output);
- SecAlign: DPO (LoRA) on the StruQ model with SecAlign's pairs.

- the prompting defences the papers compare with, on the undefended model: an instructional
  reminder, the sandwich, delimiting the data (``FRONTENDS["textual+..."]``).

Every arm answers the same held-out prompts greedily: clean (utility, exact) and under each
attack, whose data asks to "print exactly 'WORD!'" with words never printed in training;
GCG optimizes one universal suffix per arm on 4 training tasks (outside the evaluated set)
and is applied to every held-out task. The script checks that the held-out tasks' texts are
disjoint from the training tasks' (the GCG tasks among them) and writes the record. Writes
experiments/results/secalign.{md,json,png}.

    python experiments/secalign.py            # about 75 minutes on 2 CPU cores
    python experiments/secalign.py --replot
"""

from __future__ import annotations

import time

from common import (  # noqa: E402
    ROOT,
    base_with_tokens,
    check_disjoint,
    disjointness_line,
    experiment,
    pyplot,
    results_dir,
    save_table,
)

from dpokit.cli import main as dpokit  # noqa: E402

OUT = ROOT / "outputs" / "secalign"
TASKS = ROOT / "data" / "secalign_tasks"
ATTACK_ORDER = ["naive", "ignore", "escape_separation", "escape_deletion", "completion_textual",
                "completion_lookalike", "combined", "gcg"]
COMMON = ["eval_data=null", "eval_fraction=0", "progress_bar=false", "log_with=[]"]


def _run(args: list[str]) -> None:
    code = dpokit(args)
    if code:
        raise SystemExit(f"dpokit {' '.join(args[:2])} exited {code}")


def prepare_base() -> str:
    """SmolLM2 with the reserved delimiter tokens, saved as an ordinary folder."""
    from dpokit.apps.secalign import add_delimiter_tokens

    return base_with_tokens(OUT / "base-struq", add_delimiter_tokens)


def train_arms() -> dict[str, tuple[str, str]]:
    """Each arm's model folder and front end."""
    OUT.mkdir(parents=True, exist_ok=True)
    train = f"{TASKS}.train.jsonl"
    _run(["pairs", "injection", train, "--rows", "sft", "--frontend", "textual",
          "--out", str(OUT / "sft.jsonl")])
    _run(["pairs", "injection", train, "--rows", "struq", "--out", str(OUT / "struq.jsonl")])
    _run(["pairs", "injection", train, "--out", str(OUT / "pairs.jsonl")])
    base = prepare_base()
    _run(["sft", "secalign_struq_sft", "model.name=smollm2", f"train_data={OUT / 'sft.jsonl'}",
          f"output_dir={OUT / 'undefended_sft'}", *COMMON])
    _run(["sft", "secalign_struq_sft", f"model.name={base}", f"train_data={OUT / 'struq.jsonl'}",
          f"output_dir={OUT / 'struq_sft'}", *COMMON])
    _run(["train", "secalign", f"model.name={OUT / 'struq_sft' / 'final'}",
          f"train_data={OUT / 'pairs.jsonl'}", f"output_dir={OUT / 'dpo'}", *COMMON])
    undefended = str(OUT / "undefended_sft" / "final")
    return {"undefended SFT": (undefended, "textual"),
            **{f"undefended + {d}": (undefended, f"textual+{d}")
               for d in ("reminder", "sandwich", "delimiting")},
            "StruQ SFT": (str(OUT / "struq_sft" / "final"), "struq"),
            "SecAlign (StruQ + DPO)": (str(OUT / "dpo" / "final"), "struq")}


def gcg_tasks() -> list:
    """The tasks GCG tunes its suffix on: four training tasks with data, one per family."""
    from dpokit.apps.secalign.tasks import load_tasks

    chosen, families = [], set()
    for task in load_tasks(f"{TASKS}.train.jsonl"):
        if task.input and task.family not in families:
            chosen.append(task)
            families.add(task.family)
    return chosen[:4]


def disjointness() -> list[dict]:
    from dpokit.apps.secalign.tasks import load_tasks

    held = load_tasks(f"{TASKS}.eval.jsonl")
    trained = load_tasks(f"{TASKS}.train.jsonl")
    return [check_disjoint("task texts (the data)", {t.input for t in held if t.input},
                           {t.input for t in trained if t.input}),
            check_disjoint("tasks GCG tuned on", {(t.instruction, t.input) for t in held},
                           {(t.instruction, t.input) for t in gcg_tasks()})]


def evaluate(model: str, frontend: str) -> dict:
    from dpokit.apps.secalign import GCGSettings, evaluate_injection
    from dpokit.apps.secalign.tasks import load_tasks
    from dpokit.runs import load_policy

    policy = load_policy(model)
    report = evaluate_injection(policy.model, policy.tokenizer,
                                load_tasks(f"{TASKS}.eval.jsonl"), frontend,
                                gcg=GCGSettings(steps=20, suffix_tokens=10, top_k=64,
                                                candidates=32, prompts=4),
                                gcg_tasks=gcg_tasks())
    print(report.table(), flush=True)
    return {"utility": report.utility, "asr": report.asr, "examples": report.examples,
            "gcg_suffix": report.gcg.suffix, "gcg_losses": report.gcg.losses,
            "tasks": report.counts["tasks"]}


def run() -> dict:
    started = time.perf_counter()
    checked = disjointness()
    arms = train_arms()
    trained = time.perf_counter()
    data = {"arms": {name: {"frontend": fe, **evaluate(model, fe)}
                     for name, (model, fe) in arms.items()}}
    data["minutes"] = (time.perf_counter() - started) / 60
    data["train_minutes"] = (trained - started) / 60
    data["disjointness"] = checked
    return data


def write(data: dict) -> None:
    names = list(data["arms"])
    first = data["arms"][names[0]]
    lines = ["# SecAlign on SmolLM2-135M-Instruct: attack success rate (ASR) and utility", "",
             f"{first['tasks']} held-out tasks (texts never trained on), greedy decoding; ASR = "
             "share of outputs containing the injected word (in brackets: beginning with it); "
             f"utility = exact accuracy without attack. {data['minutes']:.0f} minutes "
             f"({data['train_minutes']:.0f} training). GCG: one universal suffix per arm, tuned "
             "on 4 training tasks. " + disjointness_line(data.get("disjointness", [])), "",
             "| attack | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| utility (clean) | " + " | ".join(
        f"{data['arms'][n]['utility']:.3f}" for n in names) + " |")
    for attack in ATTACK_ORDER:
        lines.append(f"| {attack} | " + " | ".join(
            f"{data['arms'][n]['asr'][attack]['in_response']:.3f} "
            f"({data['arms'][n]['asr'][attack]['begins_with']:.3f})" for n in names) + " |")
    manual = [a for a in ATTACK_ORDER if a != "gcg"]
    lines.append("| max over manual attacks | " + " | ".join(
        f"{max(data['arms'][n]['asr'][a]['in_response'] for a in manual):.3f}"
        for n in names) + " |")
    lines += ["", "GCG suffixes: " + "; ".join(
        f"{n}: `{data['arms'][n]['gcg_suffix']!r}`" for n in names)]
    save_table("secalign", lines)


def plot(data: dict) -> None:
    plt = pyplot()
    names = list(data["arms"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8),
                                      gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [data["arms"][name]["asr"][a]["in_response"] for a in ATTACK_ORDER]
        left.bar([i + k * width for i in range(len(ATTACK_ORDER))], values, width, label=name)
        right.bar(k, data["arms"][name]["utility"], 0.6)
    left.set_xticks([i + width for i in range(len(ATTACK_ORDER))], ATTACK_ORDER, rotation=30,
                    ha="right", fontsize=8)
    left.set_ylabel("attack success rate (in response)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    right.set_xticks(range(len(names)), [n.split(" (")[0] for n in names], rotation=30,
                     ha="right", fontsize=8)
    right.set_ylabel("utility (exact, clean)")
    right.set_ylim(0, 1)
    fig.suptitle("SecAlign on SmolLM2-135M-Instruct (held-out tasks and injections)")
    fig.savefig(results_dir() / "secalign.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    experiment("secalign", run, write, plot)
