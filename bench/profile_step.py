"""Where a dpokit training step spends its time: torch.profiler over a few steps, or, with
``--faults``, each step's wall time, system time and minor page faults (``getrusage``).

    python bench/profile_step.py                       # SmolLM2 + LoRA, auto precision
    python bench/profile_step.py lora=false batch_layout=padded
    python bench/profile_step.py --faults lora=false host_memory=system   # A/B of one setting

Prints the operators with the most self time; key=value arguments override the dpokit config.
With ``--faults`` the same 6 batches run after one warm-up step and their total is printed.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dpo import dpokit_trainer, make_pairs  # noqa: E402

from dpokit.config import load_config  # noqa: E402
from dpokit.policies.causal_lm.models import load_tokenizer  # noqa: E402


def timed_steps(trainer, steps: int) -> None:
    """Each step's wall and system seconds and minor page faults, then the total."""
    total = 0.0
    for step in range(steps):
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        trainer._train_step()
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        total += wall
        print(f"step {step + 2}: {wall:6.2f} s  sys {after.ru_stime - before.ru_stime:6.2f} s  "
              f"minor faults {after.ru_minflt - before.ru_minflt}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"total {total:.2f} s over {steps} steps; peak RSS {peak:.2f} GB")


def main(argv: list[str]) -> None:
    faults = "--faults" in argv
    overrides = [a for a in argv if a != "--faults"]
    base = dict(model="smollm2", lora=True, mixed_precision="auto", batch_size=4,
                max_steps=7 if faults else 4, max_length=1024, max_prompt_length=1023,
                shuffle=False, progress_bar=False, log_with=[], output_dir=tempfile.mkdtemp(),
                ref_cache_dir=None, learning_rate=5e-6)
    overridden = {o.partition("=")[0] for o in overrides}
    cfg = load_config(None, overrides, **{k: v for k, v in base.items() if k not in overridden})
    tok = load_tokenizer(cfg.model.name)
    rows = make_pairs(tok, cfg.optim.batch_size * cfg.optim.max_steps, (20, 400), (20, 300))
    trainer = dpokit_trainer(cfg, tok, rows)
    trainer.reference.prepare("train", trainer.source)
    trainer._train_step()  # warm-up
    if faults:
        return timed_steps(trainer, cfg.optim.max_steps - 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            trainer._train_step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        raise SystemExit(0)
    main(sys.argv[1:])
