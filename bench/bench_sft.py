"""dpokit SFT vs TRL's SFTTrainer, side by side, on the same rows.

Every measurement runs in a fresh subprocess (so peak memory is its own), alternating the
systems round by round. Both train the same model on the same prompt/completion rows in the
same order with the same hyper-parameters (AdamW, constant lr, clip 1.0, bf16 autocast, loss
on completion tokens only). TRL runs its fastest configuration here: padding-free (each
batch flattened into one row with restarting positions), completion-only loss, bf16, no
gradient checkpointing; it computes the full-vocabulary logits of every position. dpokit runs
its defaults: the batch packed without padding, segment attention, the chunked LM head on
completion positions only.

    pip install trl==1.16.0            # benchmark only; never a dpokit dependency
    python bench/bench_sft.py                              # both workloads, 2 rounds
    python bench/bench_sft.py --workloads smollm2-lora --steps 4 --rounds 1

``trl-heap`` (``--systems trl,trl-heap,dpokit``) is TRL under dpokit's host-memory policy.
Reported per run: median seconds per step over steps 2..N, tokens/s (real prompt + completion
tokens, the same count for both), peak memory (RSS on the CPU, max allocated on CUDA), and
the first losses (mean NLL per completion token; the two should agree).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dpo import (  # noqa: E402
    device_type,
    make_pairs,
    model_path,
    peak_memory_gb,
    records,
    run_worker_process,
    timed_step,
    trl_clock,
    trl_lora,
)

WORKLOADS = {
    # name: (model, lora, batch sequences, prompt token range, completion token range, max_length)
    "smollm2-lora": ("smollm2", True, 8, (20, 400), (20, 300), 1024),
    "smollm2-full": ("smollm2", False, 8, (20, 400), (20, 300), 1024),
}


def sft_rows(tok, n: int, prompt_range, completion_range) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"]}
            for r in make_pairs(tok, n, prompt_range, completion_range)]


def worker_dpokit(args, rows, path) -> dict:
    from dpokit.config import load_config
    from dpokit.data.text import SequenceCollator, TokenizeSettings, build_sequences
    from dpokit.objectives import SFTObjective
    from dpokit.policies.causal_lm.models import load_tokenizer
    from dpokit.runs.causal_lm import policy_for
    from dpokit.train import StaticSource, make_trainer

    cfg = load_config(None, args.dpokit_set, model=path, lora=args.lora, learning_rate=args.lr,
                      lr_scheduler="constant", batch_size=args.batch, max_steps=args.steps,
                      mixed_precision=args.precision, max_length=args.max_length,
                      max_prompt_length=args.max_length - 1, shuffle=False, progress_bar=False,
                      log_with=[], output_dir=tempfile.mkdtemp(), max_grad_norm=1.0,
                      batch_layout="packed")
    tok = load_tokenizer(path)
    settings = TokenizeSettings(max_length=cfg.data.max_length,
                                max_prompt_length=cfg.data.max_prompt_length)
    data = build_sequences(records(rows), tok, settings)
    policy = policy_for(cfg, tok, needs_reference=False, pairs=False)
    source = StaticSource(data, SequenceCollator(tok.pad_token_id, cfg.data.batch_layout),
                          cfg.optim.batch_size, shuffle=False)
    trainer = make_trainer(cfg, policy, SFTObjective(), source, log=lambda _: None)
    trainer._train_step, times = timed_step(trainer._train_step)
    history = trainer.train().history
    return {"times": times, "losses": [m["loss"] for m in history]}


def worker_trl(args, rows, path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    times, losses = [], []
    # max_length=None: TRL refuses max_length with padding_free and no packing; every row here
    # is shorter than max_length anyway (prompts <= ~410, completions <= 300 tokens)
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant", max_steps=args.steps,
        max_length=None, bf16=args.precision == "bf16", fp16=args.precision == "fp16",
        gradient_checkpointing=False,
        padding_free=True, packing=False, completion_only_loss=True, logging_steps=1,
        report_to="none", save_strategy="no", max_grad_norm=1.0,
        train_sampling_strategy="sequential", use_cpu=device_type() == "cpu",
        dataloader_num_workers=0, seed=0, warmup_steps=0)
    trainer = SFTTrainer(model=model, args=config, processing_class=tok,
                         peft_config=trl_lora(args.lora),
                         train_dataset=datasets.Dataset.from_list(rows),
                         callbacks=[trl_clock(times, losses)])
    trainer.train()
    return {"times": times, "losses": losses}


def run_worker(args) -> None:
    rows = json.loads(Path(args.data).read_text())
    if args.keep_heap:  # trl-heap: TRL under dpokit's host-memory policy (see bench_dpo.py)
        from dpokit.core.hardware import keep_freed_memory

        keep_freed_memory()
    fn = {"dpokit": worker_dpokit, "trl": worker_trl}[args.worker]
    result = fn(args, rows, args.model_path)
    result["peak_memory_gb"] = peak_memory_gb()
    print("RESULT " + json.dumps(result), flush=True)


def summarize(result: dict, rows: list[dict], tok, batch: int) -> dict:
    times = result["times"][1:] or result["times"]  # step 1 warms up
    median = statistics.median(times)
    tokens = [sum(len(tok(r["prompt"])["input_ids"]) + len(tok(r["completion"])["input_ids"])
                  for r in rows[i * batch:(i + 1) * batch])
              for i in range(len(result["times"]))]
    return {"s_per_step": median, "tokens_per_s": statistics.mean(tokens[1:] or tokens) / median,
            "peak_gb": result["peak_memory_gb"],
            "losses": [round(x, 4) for x in result["losses"][:3]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="smollm2-lora,smollm2-full")
    parser.add_argument("--systems", default="trl,dpokit")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto: each system's fastest on this machine (see bench_dpo.py)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--out", default=None, help="write the summary JSON here")
    parser.add_argument("--shape-dir", type=Path, default=None, metavar="DIR",
                        help="SmolLM2's architecture with random weights (see bench_dpo.py)")
    parser.add_argument("--dpokit-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra dpokit config overrides")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keep-heap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    from transformers import AutoTokenizer

    from dpokit.core.hardware import environment, resolve

    choice = resolve(args.precision)
    args.precision = choice.precision  # the same concrete precision for both systems
    print(choice.line(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="dpokit-bench-sft-"))
    report, failed = {"hardware": environment(choice)}, []
    for name in args.workloads.split(","):
        model, lora, batch, prompt_range, completion_range, max_length = WORKLOADS[name]
        path = model_path(model, workdir, args.shape_dir)
        tok = AutoTokenizer.from_pretrained(path)
        rows = sft_rows(tok, batch * args.steps, prompt_range, completion_range)
        data = workdir / f"{name}.json"
        data.write_text(json.dumps(rows))
        runs: dict[str, list[dict]] = {}
        for _ in range(args.rounds):
            for system in args.systems.split(","):
                cmd = [sys.executable, __file__, "--worker", system.split("-")[0],
                       "--data", str(data), "--model-path", path, "--batch", str(batch),
                       "--max-length", str(max_length), "--steps", str(args.steps),
                       "--precision", args.precision, "--lr", str(args.lr)]
                cmd += ["--lora"] if lora else []
                cmd += ["--keep-heap"] if system == "trl-heap" else []
                cmd += ["--dpokit-set", *args.dpokit_set] if args.dpokit_set else []
                result = run_worker_process(cmd)
                if result is None:
                    failed.append(f"{name}/{system}")
                    print(f"{name} {system}: FAILED (output above)")
                    continue
                summary = summarize(result, rows, tok, batch)
                runs.setdefault(system, []).append(summary)
                print(f"{name:14s} {system:8s} {summary['s_per_step']:7.2f} s/step "
                      f"{summary['tokens_per_s']:8.1f} tok/s {summary['peak_gb']:6.2f} GB "
                      f"losses {summary['losses']}", flush=True)
        best = {s: min(r, key=lambda x: x["s_per_step"]) for s, r in runs.items()}
        report[name] = best
        for trl in ("trl", "trl-heap"):
            if trl in best and "dpokit" in best:
                speed = best["dpokit"]["tokens_per_s"] / best[trl]["tokens_per_s"]
                memory = best["dpokit"]["peak_gb"] / best[trl]["peak_gb"]
                print(f"{name}: dpokit/{trl} tokens/s {speed:.2f}x, peak memory {memory:.2f}x")
                report[name][f"ratios_{trl}"] = {"throughput": speed, "memory": memory}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    if failed:
        sys.exit(f"failed runs: {', '.join(failed)}")


if __name__ == "__main__":
    main()
