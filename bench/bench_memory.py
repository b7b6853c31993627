"""Memory of the scaling options, side by side in one sitting: the peak memory per process of
a few DPO steps of SmolLM2-135M (full fine-tuning, ~600-token sequences) under each option.

Every option runs in fresh processes (torchrun for two), so each peak is its own. On a CPU
the peak is the resident set (RSS, which includes the ~0.5 GB of libraries and the loaded
model); on a CUDA GPU, torch's max allocated memory. The first losses are printed so one can
see that the options train the same thing.

    python bench/bench_memory.py                 # about 10 minutes on 2 CPU cores
    python bench/bench_memory.py --steps 2 --options ddp fsdp-2

Options: ``ddp`` (one process, the baseline), ``ddp-2`` / ``fsdp-2`` / ``zero2-2`` /
``zero3-2`` (two processes, half the batch each: DDP keeps a whole copy of weights, gradients
and AdamW state per process, FSDP2 and ZeRO-3 shard all three, ZeRO-2 gradients and AdamW
state), ``fsdp-1`` / ``zero3-1`` (one process: the engines' own cost), ``checkpointing``
(recompute activations in backward), ``offloading`` (activations saved for backward kept in
CPU memory: on a CPU they are there already, so it can save nothing; on a GPU it moves them
off the device).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

OPTIONS = {  # name: (processes, config overrides)
    "ddp": (1, {}),
    "ddp-2": (2, {}),
    "fsdp-2": (2, {"strategy": "fsdp"}),
    "fsdp-1": (1, {"strategy": "fsdp"}),  # one GPU: FSDP2 on a one-device mesh vs ddp
    "zero2-2": (2, {"strategy": "deepspeed", "zero_stage": 2}),
    "zero3-2": (2, {"strategy": "deepspeed", "zero_stage": 3}),
    "zero3-1": (1, {"strategy": "deepspeed", "zero_stage": 3}),  # one GPU, as fsdp-1
    "checkpointing": (1, {"gradient_checkpointing": True}),
    "offloading": (1, {"activation_offloading": True}),
}


def worker(args) -> None:
    from bench_dpo import dpokit_trainer, model_path, peak_memory_gb

    from dpokit.config import load_config
    from dpokit.policies.causal_lm.models import load_tokenizer

    rows = [json.loads(line) for line in Path(args.pairs).read_text().splitlines()]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    path = model_path("smollm2", Path(args.workdir), Path(args.shape_dir) if args.shape_dir
                      else None)
    cfg = load_config(None, **{
        "model.name": path, "lora": False, "learning_rate": 1e-5, "lr_scheduler": "constant",
        "batch_size": args.batch // world, "max_steps": args.steps, "max_length": 1024,
        "max_prompt_length": 1023, "shuffle": False, "progress_bar": False, "log_with": [],
        "output_dir": tempfile.mkdtemp(), "ref_cache_dir": None, "mixed_precision": "auto",
        **OPTIONS[args.worker][1]})
    trainer = dpokit_trainer(cfg, load_tokenizer(path), rows)
    history = trainer.train().history
    print("RESULT " + json.dumps({"rank": int(os.environ.get("RANK", "0")),
                                  "peak_gb": peak_memory_gb(),
                                  "losses": [round(h["loss"], 4) for h in history]}))
    trainer.close()


def run(option: str, args, pairs: Path) -> dict:
    processes = OPTIONS[option][0]
    cmd = [sys.executable, __file__, "--worker", option, "--pairs", str(pairs),
           "--steps", str(args.steps), "--batch", str(args.batch), "--workdir", args.workdir]
    if args.shape_dir:
        cmd += ["--shape-dir", args.shape_dir]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(processes), *cmd[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // processes)))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    decoder = json.JSONDecoder()  # two processes' lines may interleave: decode each record
    results = [decoder.raw_decode(part)[0] for part in proc.stdout.split("RESULT ")[1:]
               if part.startswith("{")]
    if proc.returncode or not results:
        raise SystemExit(f"{option} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"processes": processes, "peak_gb": max(r["peak_gb"] for r in results),
            "losses": results[0]["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step, all processes")
    parser.add_argument("--shape-dir", help="SmolLM2's config and tokenizer without weights "
                        "(bench_dpo.py --export-shape): its architecture, random weights")
    parser.add_argument("--out", default=str(ROOT / "memory_results.json"))
    parser.add_argument("--workdir", default=tempfile.mkdtemp(), help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from bench_dpo import make_pairs, model_path

    from dpokit.policies.causal_lm.models import load_tokenizer

    tok = load_tokenizer(model_path("smollm2", Path(args.workdir),
                                    Path(args.shape_dir) if args.shape_dir else None))
    pairs = Path(tempfile.mkdtemp()) / "pairs.jsonl"
    rows = make_pairs(tok, args.batch * args.steps, (250, 350), (200, 300))
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = {}
    for option in args.options:
        report[option] = run(option, args, pairs)
        r = report[option]
        print(f"{option:<14} {r['processes']} process(es)  peak {r['peak_gb']:.2f} GB per "
              f"process  losses {r['losses']}", flush=True)
    base = report.get("ddp", {}).get("peak_gb")
    if base:
        for option, r in report.items():
            print(f"{option:<14} {r['peak_gb'] / base:.2f}x the one-process peak")
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
