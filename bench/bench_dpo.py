"""dpokit vs TRL's DPOTrainer, side by side, and the plain-training floor.

Every measurement runs in a fresh subprocess (so peak memory is its own), alternating the
systems round by round. Both train the same model on the same pairs in the same order
(sequential sampling) with the same hyper-parameters (AdamW, constant lr, clip 1.0, beta 0.1,
bf16 autocast). TRL runs its fastest configuration on this machine (performance notes:
bf16, no gradient checkpointing, precompute_ref_log_probs=True); dpokit runs its defaults
(prefix sharing + packing, precomputed reference, chunked LM head).

    pip install trl==1.16.0            # benchmark only; never a dpokit dependency
    python bench/bench_dpo.py                              # all workloads, 2 rounds
    python bench/bench_dpo.py --workloads tiny-llama --steps 4 --rounds 1

Reported per run: median seconds per step over steps 2..N, pairs/s, tokens/s (real tokens of
prompt+chosen and prompt+rejected, the same count for both systems), peak memory (RSS on the
CPU, max allocated on CUDA), the model's estimated TFLOP per step and the GFLOP/s it ran at
(:func:`step_flops`: TRL's FLOPs over dpokit's bound the speedup at equal efficiency), and the
first losses. ``trl-heap`` is TRL under dpokit's host-memory policy (``run.host_memory: keep``,
glibc's freed memory kept in the heap), which the floor uses too. ``floor`` is a plain
forward+backward of the same model over the same unique tokens (the prefix-shared rows dpokit
runs) with an ordinary next-token loss; dpokit/floor is the overhead of preference training.
The same script runs unchanged on a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # dpokit without installing it (the GPU machine)
WORKLOADS = {
    # name: (model, lora, batch pairs, prompt token range, completion token range, max_length)
    "smollm2-full": ("smollm2", False, 4, (20, 400), (20, 300), 1024),
    "smollm2-lora": ("smollm2", True, 4, (20, 400), (20, 300), 1024),
    "tiny-llama": ("tiny", False, 8, (20, 400), (20, 300), 1024),
    # tiny-llama's shape as a Mistral with a 128-token sliding window (rows reach past it)
    "tiny-mistral": ("tiny-mistral", False, 8, (20, 400), (20, 300), 1024),
    "smollm2-long": ("smollm2", True, 1, (900, 1000), (900, 1000), 2048),
    # a ~1B Llama (TinyLlama-1.1B's shape, SmolLM2's vocabulary), random weights: GPU only
    "llama-1b-lora": ("llama-1b", True, 4, (20, 400), (20, 300), 1024),
}


def device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def peak_memory_gb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB


# --- data ----------------------------------------------------------------------------------
def sentences() -> list[str]:
    texts = []
    for split in ("train", "eval"):
        for line in (ROOT / "data" / f"sentiment_pairs.{split}.jsonl").read_text().splitlines():
            texts.append(json.loads(line)["chosen"])
    return sorted(set(texts))


def text_of_length(tokenizer, pool: list[str], n_tokens: int, rng: random.Random) -> str:
    """Real review sentences concatenated, cut to exactly ``n_tokens`` tokens."""
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += tokenizer(" " + rng.choice(pool), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:n_tokens])


def make_pairs(tokenizer, n: int, prompt_range, completion_range, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pool = sentences()
    rows = []
    for _ in range(n):
        prompt = "Continue the review: " + text_of_length(
            tokenizer, pool, rng.randint(*prompt_range), rng
        )
        rows.append(
            {
                "prompt": prompt,
                "chosen": text_of_length(tokenizer, pool, rng.randint(*completion_range), rng),
                "rejected": text_of_length(tokenizer, pool, rng.randint(*completion_range), rng),
            }
        )
    return rows


# --- models --------------------------------------------------------------------------------
SHAPE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def export_shape(target: Path) -> None:
    """Copy SmolLM2's config and tokenizer, without weights (~3.5 MB), into ``target``.

    The embedded model (a 98 MB GGUF file) is too big to travel to a machine that cannot
    install it; with ``--shape-dir`` the benchmark rebuilds the same architecture there."""
    import shutil

    from dpokit.policies.causal_lm.models import embedded_smollm2_dir

    source = embedded_smollm2_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in SHAPE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    print(f"wrote {', '.join(sorted(p.name for p in target.iterdir()))} to {target}")


def _random_init(config, tokenizer_dir: Path, target: Path) -> str:
    """Save a model of ``config`` (a Llama or a Mistral) with seed-0 random weights, plus the
    tokenizer, to ``target``."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    if not (target / "config.json").exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(target)
        for name in SHAPE_FILES[2:]:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, target / name)
    return str(target)


def model_path(name: str, workdir: Path, shape_dir: Path | None = None) -> str:
    """A local HF folder: the embedded SmolLM2 (or, with ``shape_dir``, its architecture with
    random weights: the same shapes, tokens and FLOPs), or a tiny Llama with SmolLM2's 49k
    vocabulary."""
    from transformers import LlamaConfig, MistralConfig

    from dpokit.policies.causal_lm.models import embedded_smollm2_dir

    smol = shape_dir or embedded_smollm2_dir()
    if name == "smollm2":
        if shape_dir is None:
            return str(smol)
        return _random_init(LlamaConfig.from_pretrained(smol), smol, workdir / "smollm2-random")
    if name == "llama-1b":
        config = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=5632,
                             num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                             max_position_embeddings=2048, tie_word_embeddings=False)
        return _random_init(config, smol, workdir / "llama-1b")
    shape = dict(vocab_size=49152, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                 tie_word_embeddings=True)
    if name == "tiny-mistral":
        return _random_init(MistralConfig(**shape, sliding_window=128), smol,
                            workdir / "tiny-mistral")
    return _random_init(LlamaConfig(**shape), smol, workdir / "tiny-llama")


# --- pieces both benchmarks share ---------------------------------------------------------
def timed_step(step):
    """Wrap a trainer's ``_train_step`` to record each step's wall time: (wrapped, times)."""
    import torch

    times: list[float] = []

    def timed():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        return metrics

    return timed, times


def trl_clock(times: list[float], losses: list[float]):
    """A TRL/transformers callback recording each step's wall time and logged loss."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    return Clock()


def trl_lora(lora: bool):
    """The LoRA config both systems use (r 16, alpha 32, every linear layer), or None."""
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def records(rows: list[dict]):
    from dpokit.data.io import Record

    return [Record("bench", i + 1, r) for i, r in enumerate(rows)]


# --- workers (each runs in its own process) -------------------------------------------------
def dpokit_trainer(cfg, tok, rows: list[dict]):
    """A dpokit preference Trainer on ``rows`` in file order, from a bench config."""
    from dpokit.data.text import PairCollator, TokenizeSettings, build_pairs
    from dpokit.objectives import build_objective
    from dpokit.runs.causal_lm import policy_for
    from dpokit.train import StaticSource, make_trainer

    pairs = build_pairs(records(rows), tok, TokenizeSettings(
        max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length))
    objective = build_objective(cfg.loss)
    policy = policy_for(cfg, tok, objective.needs_reference)
    source = StaticSource(pairs, PairCollator(tok.pad_token_id, cfg.data.batch_layout),
                          cfg.optim.batch_size, shuffle=False)
    return make_trainer(cfg, policy, objective, source, log=lambda _: None)


def worker_dpokit(args, rows, path) -> dict:
    from dpokit.config import load_config
    from dpokit.policies.causal_lm.models import load_tokenizer

    base = dict(
        model=path,
        lora=args.lora,
        learning_rate=args.lr,
        lr_scheduler="constant",
        batch_size=args.batch,
        max_steps=args.steps,
        mixed_precision=args.precision,
        max_length=args.max_length,
        max_prompt_length=args.max_length - 1,
        beta=0.1,
        shuffle=False,
        progress_bar=False,
        log_with=[],
        output_dir=tempfile.mkdtemp(),
        ref_cache_dir=None,
        batch_layout=args.layout,
        precompute_ref_logps=True,
        max_grad_norm=1.0,
    )
    overridden = {item.partition("=")[0] for item in args.dpokit_set}
    cfg = load_config(
        None, args.dpokit_set, **{k: v for k, v in base.items() if k not in overridden}
    )
    trainer = dpokit_trainer(cfg, load_tokenizer(path), rows)
    trainer._train_step, times = timed_step(trainer._train_step)
    history = trainer.train().history
    return {"times": times, "losses": [m["loss"] for m in history]}


def worker_trl(args, rows, path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    times, losses = [], []
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        max_steps=args.steps,
        beta=0.1,
        max_length=args.max_length,
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        max_grad_norm=1.0,
        train_sampling_strategy="sequential",
        use_cpu=device_type() == "cpu",
        dataloader_num_workers=0,
        seed=0,
        warmup_steps=0,
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        processing_class=tok,
        peft_config=trl_lora(args.lora),
        train_dataset=datasets.Dataset.from_list(rows),
        callbacks=[trl_clock(times, losses)],
    )
    trainer.train()
    return {"times": times, "losses": losses}


def worker_floor(args, rows, path) -> dict:
    """Plain forward + backward over the unique tokens of each step (prefix-shared rows), with
    an ordinary next-token loss on every real token (the padding at row ends is not scored:
    scoring it gave NaN gradients on a randomly initialised SmolLM2)."""
    import torch

    from dpokit.data.text import TokenizeSettings, build_pairs, collate_pairs
    from dpokit.policies.causal_lm.lora import apply_lora
    from dpokit.policies.causal_lm.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(path)
    model = load_causal_lm(path)
    if args.lora:
        model = apply_lora(model)
    device = device_type()
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    pairs = build_pairs(records(rows), tok, TokenizeSettings(
        max_length=args.max_length, max_prompt_length=args.max_length))
    times, losses = [], []
    for step in range(args.steps):
        batch = collate_pairs(
            pairs.pairs[step * args.batch : (step + 1) * args.batch],
            tok.pad_token_id,
            "prefix_shared",
        ).to(device)
        real = torch.zeros(batch.input_ids.shape, dtype=torch.bool, device=device)  # (R, T)
        for row, segments in enumerate(batch.segments):
            for start, p, c, n in segments:
                real[row, start : start + p + c + n] = True
        labels = batch.input_ids.masked_fill(~real, -100)  # (R, T): no loss on row padding
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
        with torch.autocast(device, dtype=dtype, enabled=args.precision in ("bf16", "fp16")):
            logits = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
            ).logits  # (R, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten()
        )  # mean over real tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    return {"times": times, "losses": losses}


def run_worker(args) -> None:
    rows = json.loads(Path(args.data).read_text())
    if args.keep_heap or args.worker == "floor":  # the floor: dpokit's host-memory policy
        from dpokit.core.hardware import keep_freed_memory

        keep_freed_memory()
    fn = {"dpokit": worker_dpokit, "trl": worker_trl, "floor": worker_floor}[args.worker]
    result = fn(args, rows, args.model_path)
    result["peak_memory_gb"] = peak_memory_gb()
    print("RESULT " + json.dumps(result), flush=True)


# --- the driver ----------------------------------------------------------------------------
def summarize(result: dict, rows: list[dict], tok, batch: int, system: str,
              flops: list[dict[str, float]]) -> dict:
    times = result["times"][1:] or result["times"]  # step 1 warms up
    median = statistics.median(times)
    kind = system.split("-")[0]  # trl-heap: TRL's work
    tokens = [
        sum(
            len(tok(r["prompt"])["input_ids"]) * 2
            + len(tok(r["chosen"])["input_ids"])
            + len(tok(r["rejected"])["input_ids"])
            for r in rows[i * batch : (i + 1) * batch]
        )
        for i in range(len(result["times"]))
    ]
    tokens_per_step = statistics.mean(tokens[1:] or tokens)
    tflop = statistics.mean(f[kind] for f in flops[1:] or flops) / 1e12
    return {
        "s_per_step": median,
        "pairs_per_s": batch / median,
        "tokens_per_s": tokens_per_step / median,
        "peak_gb": result["peak_memory_gb"],
        "losses": [round(x, 4) for x in result["losses"][:3]],
        "tflop_per_step": tflop,
        "gflops": tflop * 1e3 / median,  # the mean step's FLOPs over the median step's time
    }


def step_flops(rows: list[dict], tok, config: dict, lora: bool) -> dict[str, float]:
    """Estimated FLOPs of one step's model work per system, from the token counts of its rows.

    The linear layers cost 2 FLOPs per parameter per token forward, as much again for the
    input gradient and, with full fine-tuning, once more for the weight gradient (6N per token
    full, 4N with LoRA, whose adapters are ignored); attention 4 * q * k * width per layer
    forward, 3x that with its backward. TRL pads the 2B sequences to the longest prompt +
    completion (dense T x T attention) and, like dpokit, applies the LM head to completion
    positions only (its fused LM head, TRL >= 1.x); dpokit runs each prompt once (causal over
    prompt + chosen, rejected against [prompt | itself]); the floor runs dpokit's unique tokens
    with full logits.
    """
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    body = layers * (2 * h * heads * head_dim + 2 * h * kv * head_dim
                     + 3 * h * config["intermediate_size"])
    head, width = h * config["vocab_size"], heads * head_dim
    mult = 4 if lora else 6

    def attention(q: float, k: float) -> float:
        return 3 * layers * 4 * q * k * width

    totals = {"trl": 0.0, "dpokit": 0.0, "floor": 0.0}
    longest = completions = 0
    for r in rows:
        p, c, j = (len(tok(r[k])["input_ids"]) for k in ("prompt", "chosen", "rejected"))
        unique, shared_attention = p + c + j, attention(p + c, p + c) / 2 + attention(j, p + j / 2)
        totals["dpokit"] += mult * (body * unique + head * (c + j)) + shared_attention
        totals["floor"] += mult * (body + head) * unique + shared_attention
        longest, completions = max(longest, p + c, p + j), completions + c + j
    totals["trl"] = (2 * len(rows) * (mult * body * longest + attention(longest, longest))
                     + mult * head * completions)
    return totals


def run_worker_process(cmd: list[str]) -> dict | None:
    """Run one benchmark worker (dpokit from ``src/``) and return its ``RESULT`` record; on a
    failure print its output's tail and return None."""
    python_path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="smollm2-full,smollm2-lora,tiny-llama")
    parser.add_argument("--systems", default="trl,dpokit,floor")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto: each system's fastest on this machine (bf16 where the device "
                        "computes it natively, fp16 on a CUDA GPU without bf16, else fp32)")
    parser.add_argument("--layout", default="prefix_shared")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--out", default=None, help="write the summary JSON here")
    parser.add_argument(
        "--shape-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="smollm2 workloads on SmolLM2's architecture with random weights, "
        "config and tokenizer from DIR (see --export-shape)",
    )
    parser.add_argument(
        "--export-shape",
        type=Path,
        default=None,
        metavar="DIR",
        help="write SmolLM2's config and tokenizer (no weights) to DIR and exit",
    )
    parser.add_argument(
        "--dpokit-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra dpokit config overrides (A/B of dpokit variants)",
    )
    # worker-only arguments
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
    if args.export_shape:
        return export_shape(args.export_shape)

    from transformers import AutoTokenizer

    from dpokit.core.hardware import environment, resolve

    choice = resolve(args.precision)
    args.precision = choice.precision  # the same concrete precision for every system
    print(choice.line(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="dpokit-bench-"))
    report, failed = {"hardware": environment(choice)}, []
    for name in args.workloads.split(","):
        model, lora, batch, prompt_range, completion_range, max_length = WORKLOADS[name]
        path = model_path(model, workdir, args.shape_dir)
        tok = AutoTokenizer.from_pretrained(path)
        rows = make_pairs(tok, batch * args.steps, prompt_range, completion_range)
        config = json.loads((Path(path) / "config.json").read_text())
        flops = [step_flops(rows[i * batch : (i + 1) * batch], tok, config, lora)
                 for i in range(args.steps)]
        data = workdir / f"{name}.json"
        data.write_text(json.dumps(rows))
        runs: dict[str, list[dict]] = {}
        for round_ in range(args.rounds):
            for system in args.systems.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    system.split("-")[0],
                    "--data",
                    str(data),
                    "--model-path",
                    path,
                    "--batch",
                    str(batch),
                    "--max-length",
                    str(max_length),
                    "--steps",
                    str(args.steps),
                    "--precision",
                    args.precision,
                    "--layout",
                    args.layout,
                    "--lr",
                    str(args.lr),
                ] + (["--lora"] if lora else []) + (["--keep-heap"] if system == "trl-heap" else [])
                cmd += ["--dpokit-set", *args.dpokit_set] if args.dpokit_set else []
                started = time.perf_counter()
                result = run_worker_process(cmd)
                if result is None:  # reported; go on: the other systems' figures still count
                    print(
                        f"[{name} round {round_ + 1}] {system:<6} FAILED (output above)", flush=True
                    )
                    failed.append(f"{system} on {name}")
                    continue
                summary = summarize(result, rows, tok, batch, system, flops)
                runs.setdefault(system, []).append(summary)
                print(
                    f"[{name} round {round_ + 1}] {system:<6} {summary['s_per_step']:.2f} s/step "
                    f"{summary['pairs_per_s']:.3f} pairs/s  peak {summary['peak_gb']:.2f} GB  "
                    f"losses {summary['losses']}  ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        report[name] = {
            s: {
                k: (statistics.median([r[k] for r in rs]) if k != "losses" else rs[0][k])
                for k in rs[0]
            }
            for s, rs in runs.items()
        }
        if args.out:  # after each workload: a time limit that ends the run keeps what finished
            Path(args.out).write_text(json.dumps(report, indent=1))
    print_report(report)
    if failed:
        raise SystemExit("failed: " + ", ".join(failed))


def print_report(report: dict) -> None:
    print(
        f"\n{'workload':<14} {'system':<8} {'s/step':>7} {'pairs/s':>8} {'tokens/s':>9} "
        f"{'peak GB':>8} {'TFLOP':>6} {'GFLOP/s':>8}  first losses"
    )
    for name, systems in report.items():
        if name == "hardware":
            print(f"hardware: {systems['device']['name']} ({systems['device']['capability']}), "
                  f"{systems['threads']} threads, precision {systems['precision']}")
            continue
        for system, r in systems.items():
            print(
                f"{name:<14} {system:<8} {r['s_per_step']:>7.2f} {r['pairs_per_s']:>8.3f} "
                f"{r['tokens_per_s']:>9.1f} {r['peak_gb']:>8.2f} "
                f"{r.get('tflop_per_step', 0):>6.2f} "
                f"{r.get('gflops', 0):>8.1f}  {r['losses']}"
            )
        d, f = systems.get("dpokit"), systems.get("floor")
        for trl in ("trl", "trl-heap"):
            t = systems.get(trl)
            if d and t:
                print(
                    f"{'':<14} dpokit/{trl}: throughput "
                    f"x{d['pairs_per_s'] / t['pairs_per_s']:.2f}, "
                    f"peak memory x{d['peak_gb'] / t['peak_gb']:.2f}"
                    + (f"; its FLOPs / dpokit's x{t['tflop_per_step'] / d['tflop_per_step']:.2f} "
                       "(the speedup at equal GFLOP/s)" if "tflop_per_step" in t else "")
                )
        if d and f:
            print(
                f"{'':<14} dpokit step / plain floor step: x{d['s_per_step'] / f['s_per_step']:.2f}"
            )


if __name__ == "__main__":
    main()
