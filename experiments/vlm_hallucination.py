"""Hallucination reduction with vision-language DPO (the RLAIF-V recipe, at toy scale), offline.

A small LLaVA-style model: a CLIP vision encoder trained from scratch on synthetic scenes
(coloured circles, squares and triangles in a 2x2 grid, rendered with PIL), a new projector,
and the embedded SmolLM2-135M-Instruct as the language model. SFT (LoRA on the language part +
the projector; the encoder frozen) on questions about the scenes with program answers; then DPO
on new scenes whose rejected answers name colours or shapes absent from the image: the SFT
model's own hallucinated answers where it makes one, else the true answer with one attribute
swapped for an absent one. Evaluated on held-out scenes: the hallucination rate (answers naming
a colour or shape the image does not have), per question kind, and exact accuracy, for the
assembled base / SFT / DPO. Held out: four colour-shape combinations (``HELD_OUT`` in
``dpokit.apps.worlds.vision_shapes``) are in no scene the encoder, SFT or DPO trained on, and
every evaluation scene holds at least one of them; the script checks that no evaluation scene
and no (scene, question, answer) equals a training one and writes the record. Writes
experiments/results/vlm_hallucination.{md,json,png}.

    python experiments/vlm_hallucination.py            # about 30 minutes on 2 CPU cores
    python experiments/vlm_hallucination.py --replot
    python experiments/vlm_hallucination.py --smoke     # every step at toy sizes, no results
    python experiments/vlm_hallucination.py --reuse-sft # keep outputs/vlm/{base,sft} of a run

DPO here is RPO (Pang et al. 2024): the DPO loss plus the chosen answer's NLL (loss
[sigmoid, sft]), one epoch; plain DPO at 5e-4 for 2 epochs lowered hallucination but made
the model stop ending its answers (the chosen log-probs fell with the rejected ones), and
exact accuracy collapsed (see the README).
"""

from __future__ import annotations

import json
import random
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

from dpokit.cli import main as dpokit  # noqa: E402

OUT = ROOT / "outputs" / "vlm"
IMAGE, PATCH = 48, 8
COMMON = ["lora=true", "lora_r=16", "lora_alpha=32", "modules_to_save=[multi_modal_projector]",
          "batch_size=16", "mixed_precision=auto", "max_length=192", "max_prompt_length=128",
          "eval_fraction=0", "eval_before=false", "progress_bar=false", "log_with=[]",
          "overwrite_output_dir=true", "lr_scheduler=cosine", "warmup_steps=5"]
DPO_KINDS = ("colour", "describe", "position")  # the kinds whose answers name attributes
SMOKE = "--smoke" in sys.argv
REUSE = "--reuse-sft" in sys.argv
SIZES = ({"encoder_steps": 5, "sft": 6, "dpo": 4, "eval": 3} if SMOKE else
         {"encoder_steps": 400, "sft": 500, "dpo": 200, "eval": 80})


def _run(args: list[str]) -> None:
    code = dpokit(args)
    if code:
        raise SystemExit(f"dpokit {' '.join(args[:2])} exited {code}")


def _vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                            num_attention_heads=4, image_size=IMAGE, patch_size=PATCH)


def questions(split: str, scenes: int, kinds, seed: int, which: str) -> list[dict]:
    """Scenes of the world's ``which`` split ("train" or "held_out") rendered to
    OUT/images/<split>_<i>.png, each with one question of every kind."""
    from dpokit.apps.worlds.vision_shapes import ask, random_scene

    rng = random.Random(seed)
    folder = OUT / "images"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(scenes):
        scene = random_scene(rng, split=which)
        path = folder / f"{split}_{i}.png"
        scene.render(IMAGE, rng).save(path)
        for kind in kinds:
            q = ask(scene, kind, rng)
            out.append({"scene": scene, "image": str(path), "question": q})
    return out


def _write(name: str, rows: list[dict]) -> str:
    path = OUT / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def answers(model: str, items: list[dict]) -> list[str]:
    from PIL import Image

    from dpokit.runs import load_policy

    policy = load_policy(model)
    images = [[Image.open(x["image"]).convert("RGB")] for x in items]
    return policy.answer([x["question"].text for x in items], images, max_new_tokens=40,
                         batch_size=32)


def dpo_pairs(sft_model: str, items: list[dict], seed: int) -> tuple[list[dict], dict]:
    """Chosen: the program answer; rejected: the SFT model's answer when it hallucinates,
    else the program answer with one attribute swapped for an absent one."""
    from dpokit.apps.worlds.vision_shapes import (
        COLOURS,
        SHAPES,
        hallucinated,
        with_absent_attribute,
    )

    rng = random.Random(seed)
    drawn = answers(sft_model, items)
    pairs, counts = [], {"own hallucination": 0, "swapped attribute": 0}
    for x, said in zip(items, drawn, strict=True):
        scene, q = x["scene"], x["question"]
        if hallucinated(scene, said):
            rejected, how = said, "own hallucination"
        else:
            rejected, how = with_absent_attribute(scene, q.answer, rng), "swapped attribute"
            if rejected is None:  # "Nothing.": reject an object that is not there
                colour = rng.choice([c for c in COLOURS if c not in
                                     {i.colour for i in scene.items}])
                rejected = f"A {colour} {rng.choice(SHAPES)}."
        counts[how] += 1
        pairs.append({"prompt": q.text, "images": [x["image"]], "chosen": q.answer,
                      "rejected": rejected})
    return pairs, counts


def score(items: list[dict], said: list[str]) -> dict:
    from dpokit.apps.worlds.vision_shapes import KINDS, correct, hallucinated

    out: dict = {}
    for kind in (*KINDS, "all"):
        chosen = [(x, a) for x, a in zip(items, said, strict=True)
                  if kind == "all" or x["question"].kind == kind]
        out[kind] = {
            "hallucination": sum(bool(hallucinated(x["scene"], a)) for x, a in chosen)
            / len(chosen),
            "accuracy": sum(correct(x["question"], a) for x, a in chosen) / len(chosen),
            "n": len(chosen)}
    return out


def run() -> dict:
    from dpokit.apps.worlds.vision_shapes import KINDS, pretrain_encoder
    from dpokit.policies.causal_lm.models import load_causal_lm, load_tokenizer
    from dpokit.policies.vision_language import assemble_llava

    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    sft = questions("sft", SIZES["sft"], KINDS, seed=1, which="train")
    if REUSE:  # the encoder, base and SFT model of an earlier run (its minutes and accuracy)
        earlier = json.loads((results_dir() / "vlm_hallucination.json").read_text())
        cell_accuracy = earlier["encoder_cell_accuracy"]
        stamps = {k: 60 * earlier["minutes"][k] for k in ("encoder + assembly", "SFT")}
        started -= sum(stamps.values())
        encoder_scenes = json.loads((OUT / "encoder_scenes.json").read_text())
    else:
        encoder = pretrain_encoder(_vision_config(), steps=SIZES["encoder_steps"],
                                   batch_size=64, image_size=IMAGE, split="train")
        cell_accuracy = encoder.cell_accuracy
        encoder_scenes = sorted(s.describe() for s in encoder.seen)
        (OUT / "encoder_scenes.json").write_text(json.dumps(encoder_scenes))
        print(f"encoder: cell accuracy on held-out scenes {cell_accuracy:.3f}", flush=True)
        model, processor = assemble_llava(_vision_config(), load_causal_lm("smollm2"),
                                          load_tokenizer("smollm2"), IMAGE, PATCH, encoder.tower)
        model.save_pretrained(OUT / "base")
        processor.save_pretrained(OUT / "base")
        stamps = {"encoder + assembly": time.perf_counter() - started}
        sft_rows = _write("sft.jsonl", [{"prompt": x["question"].text,
                                         "completion": x["question"].answer,
                                         "images": [x["image"]]} for x in sft])
        _run(["sft", f"model={OUT / 'base'}", f"train_data={sft_rows}", "learning_rate=1e-3",
              "num_epochs=1", f"output_dir={OUT / 'sft'}", *COMMON])
        stamps["SFT"] = time.perf_counter() - started - sum(stamps.values())

    prompts = questions("dpo", SIZES["dpo"], DPO_KINDS, seed=2, which="train")
    pairs, sources = dpo_pairs(str(OUT / "sft" / "final"), prompts, seed=3)
    _run(["train", f"model={OUT / 'sft' / 'final'}", f"train_data={_write('dpo.jsonl', pairs)}",
          "loss=[sigmoid,sft]", "loss_weights=[1.0,1.0]", "learning_rate=2e-4", "beta=0.1",
          "num_epochs=1", f"output_dir={OUT / 'dpo'}", *COMMON])
    stamps["DPO pairs + DPO"] = time.perf_counter() - started - sum(stamps.values())

    held = questions("eval", SIZES["eval"], KINDS, seed=4, which="held_out")

    def triples(items):
        return {(x["scene"].describe(), x["question"].text, x["question"].answer) for x in items}

    trained_scenes = set(encoder_scenes) | {x["scene"].describe() for x in sft + prompts}
    disjointness = [
        check_disjoint("scenes", {x["scene"].describe() for x in held}, trained_scenes),
        check_disjoint("(scene, question, answer) triples", triples(held),
                       triples(sft) | triples(prompts))]
    data: dict = {"stages": {}, "encoder_cell_accuracy": cell_accuracy,
                  "disjointness": disjointness,
                  "sft_rows": len(sft), "dpo_pairs": len(pairs), "rejected_from": sources,
                  "held_out_questions": len(held), "examples": []}
    said_by_stage = {}
    for stage, path in (("base", OUT / "base"), ("SFT", OUT / "sft" / "final"),
                        ("DPO", OUT / "dpo" / "final")):
        said = answers(str(path), held)
        said_by_stage[stage] = said
        data["stages"][stage] = score(held, said)
        print(stage, json.dumps(data["stages"][stage]["all"]), flush=True)
    for k in range(0, len(held), len(held) // 8)[:8]:
        x = held[k]
        data["examples"].append({"image": x["image"], "question": x["question"].text,
                                 "truth": x["question"].answer,
                                 **{s: said_by_stage[s][k] for s in said_by_stage}})
    stamps["evaluation"] = time.perf_counter() - started - sum(stamps.values())
    data["minutes"] = {k: v / 60 for k, v in stamps.items()}
    return data


def write(data: dict) -> None:
    from dpokit.apps.worlds.vision_shapes import KINDS

    minutes = data["minutes"]
    lines = ["# Vision-language DPO against hallucination (synthetic scenes, SmolLM2-135M)", "",
             f"Encoder trained from scratch (cell accuracy on held-out scenes "
             f"{data['encoder_cell_accuracy']:.3f}); {data['sft_rows']} SFT rows; "
             f"{data['dpo_pairs']} DPO pairs (rejected: "
             + ", ".join(f"{n} {k}" for k, n in data["rejected_from"].items()) + "); "
             f"{data['held_out_questions']} held-out questions on scenes that each hold a "
             "colour-shape combination no training scene has. "
             + disjointness_line(data["disjointness"]) + " "
             f"{sum(minutes.values()):.0f} minutes (" + ", ".join(
                 f"{k} {v:.1f}" for k, v in minutes.items()) + ").", "",
             "Hallucination: the answer names a colour or shape the image does not have. "
             "Accuracy: the answer says what the program answer says. DPO: the DPO loss plus "
             "the chosen answer's NLL (RPO), one epoch, LoRA; the plain-DPO run is in "
             "vlm_hallucination_plain_dpo.md.", "",
             "| stage | hallucination (all) | accuracy (all) | "
             + " | ".join(f"{k}: halluc. / acc." for k in KINDS) + " |",
             "|---|---|---|" + "---|" * len(KINDS)]
    for stage, r in data["stages"].items():
        lines.append(f"| {stage} | {r['all']['hallucination']:.3f} | {r['all']['accuracy']:.3f} | "
                     + " | ".join(f"{r[k]['hallucination']:.3f} / {r[k]['accuracy']:.3f}"
                                  for k in KINDS) + " |")
    lines += ["", "Examples (held-out):", "", "| question | truth | SFT | DPO |",
              "|---|---|---|---|"]
    for e in data["examples"]:
        lines.append(f"| {e['question']} | {e['truth']} | {e['SFT']} | {e['DPO']} |")
    save_table("vlm_hallucination", lines)


def plot(data: dict) -> None:
    from dpokit.apps.worlds.vision_shapes import KINDS

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    stages = list(data["stages"])
    for ax, metric in zip(axes, ("hallucination", "accuracy"), strict=True):
        groups = [*KINDS, "all"]
        width = 0.8 / len(stages)
        for k, stage in enumerate(stages):
            ax.bar([i + k * width for i in range(len(groups))],
                   [data["stages"][stage][g][metric] for g in groups], width, label=stage)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
        ax.set_ylim(0, 1)
        ax.set_title(f"{metric} rate" if metric == "hallucination" else "exact accuracy")
        ax.legend(fontsize=8)
    fig.suptitle("Held-out synthetic scenes: assembled base, SFT, DPO (rejected = absent "
                 "attributes)")
    fig.savefig(results_dir() / "vlm_hallucination.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    if SMOKE:
        OUT = OUT.parent / "vlm_smoke"
        print(json.dumps(run()["stages"]["DPO"]["all"]))
    else:
        experiment("vlm_hallucination", run, write, plot)
