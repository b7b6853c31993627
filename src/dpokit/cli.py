"""The ``dpokit`` command.

    dpokit quickstart [key=value ...]        DPO + LoRA on the embedded SmolLM2, before/after
    dpokit train [RECIPE.yaml] [key=value ...]
    dpokit losses                             list the registered losses
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from pathlib import Path

QUICKSTART_PROMPTS = [
    "Write one sentence from a positive movie review.",
    "Write one sentence from a negative movie review.",
    "In one sentence, pan a movie.",
]


def _quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _repo_relative(path: str | None) -> str | None:
    """Data paths in packaged recipes are relative to the repo root; find it from anywhere."""
    if path is None or Path(path).exists():
        return path
    candidate = Path(__file__).resolve().parents[2] / path
    return str(candidate) if candidate.exists() else path


def _main_process_print(*args, **kwargs) -> None:
    """print on the first process only (torchrun / accelerate launch set RANK)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs)


def cmd_train(recipe: str | None, overrides: list[str]) -> int:
    from .config import load_config
    from .pipeline import build_run

    cfg = load_config(recipe, overrides)
    run = build_run(cfg, log=_main_process_print)
    result = run.trainer.train()
    final = run.trainer.save_final()
    run.trainer.close()
    _main_process_print(f"done: {result.step} steps on {run.trainer.world} process(es); model "
                        f"saved to {final}; metrics in {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0


def cmd_quickstart(overrides: list[str]) -> int:
    from .config import load_config
    from .evaluate import comparison_table, generate
    from .pipeline import build_run

    started = time.perf_counter()
    recipe = resources.files("dpokit") / "recipes" / "quickstart.yaml"
    cfg = load_config(str(recipe), overrides)
    cfg.train_data = _repo_relative(cfg.train_data)
    cfg.eval_data = _repo_relative(cfg.eval_data)
    print(f"dpokit quickstart: DPO + LoRA on {cfg.model}, loss={cfg.loss}, beta={cfg.beta}")
    run = build_run(cfg)
    print("evaluating the model before training ...")
    before = run.trainer.evaluate()
    before_text = generate(run.policy, run.tokenizer, QUICKSTART_PROMPTS)
    result = run.trainer.train()
    after = result.eval_history[-1]  # the trainer evaluates at the end of training
    after_text = generate(run.policy, run.tokenizer, QUICKSTART_PROMPTS)
    final = run.trainer.save_final()
    print("\n" + comparison_table(before, after))
    print(f"\n(held-out: {len(run.eval_pairs)} pairs from sentences never seen in training; "
          f"50% is the no-skill level by construction)\n")
    for prompt, b, a in zip(QUICKSTART_PROMPTS, before_text, after_text, strict=False):
        print(f"prompt: {prompt}\n  before: {b}\n  after:  {a}\n")
    minutes = (time.perf_counter() - started) / 60
    print(f"{result.step} steps in {minutes:.1f} min; LoRA adapter saved to {final}")
    return 0


def loss_needs(spec) -> str:
    """What a registered loss needs, in words (the README's loss table uses the same)."""
    needs = ["reference" if spec.needs_reference else "no reference"]
    if spec.length_normalized:
        needs.append("length-normalized")
    if spec.unpaired:
        needs.append("unpaired rows (prompt, completion, label)")
    needs += [f"column `{c}`" for c in spec.extra_columns]
    return ", ".join(needs)


def cmd_losses() -> int:
    from .losses import available_losses

    specs = {spec.name: spec for spec in available_losses().values()}
    for name in sorted(specs):
        print(f"{name:<18} {loss_needs(specs[name]):<44} {specs[name].paper}")
        print(f"{'':<18} {specs[name].formula}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpokit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train from a YAML recipe and key=value overrides")
    train.add_argument("args", nargs="*", help="[RECIPE.yaml] key=value ...")
    quick = sub.add_parser("quickstart", help="align the embedded SmolLM2, show before/after")
    quick.add_argument("overrides", nargs="*", help="key=value ...")
    sub.add_parser("losses", help="list the registered losses")
    args = parser.parse_args(argv)
    _quiet_libraries()
    from .config import ConfigError
    from .data import DataError
    from .models import ModelLoadError
    from .trainer import NonFiniteError

    try:
        if args.command == "train":
            recipe = None
            overrides = list(args.args)
            if overrides and "=" not in overrides[0]:
                recipe = overrides.pop(0)
            return cmd_train(recipe, overrides)
        if args.command == "quickstart":
            return cmd_quickstart(args.overrides)
        return cmd_losses()
    except (ConfigError, DataError, ModelLoadError, NonFiniteError, KeyError, ValueError,
            NotImplementedError) as err:
        print(f"dpokit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
