"""The ``dpokit`` command.

    dpokit quickstart [key=value ...]        DPO + LoRA on the embedded SmolLM2, before/after
    dpokit train [RECIPE.yaml] [key=value ...]   preference optimization (DPO and its family)
    dpokit sft [RECIPE.yaml] [key=value ...]     supervised fine-tuning
    dpokit pairs votes|scored|sample|failures IN... --out OUT    build preference pairs
    dpokit data inspect|split FILE            look at a dataset; split it by prompt
    dpokit eval MODEL --pairs F --prompts F --reward R   held-out figures vs the reference
    dpokit harness MODEL --task-files DIR     lm-evaluation-harness tasks (local or by name)
    dpokit report RUN_DIR [RUN_DIR ...]       an HTML page of one run or several side by side
    dpokit losses                             the registered losses and their hyper-parameters
    dpokit config                             every config field, its default and meaning
    dpokit env                                versions, device, the precision auto picks, speed
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
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
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


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    overrides = list(args)
    recipe = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    return recipe, overrides


def _load(recipe: str | None, overrides: list[str]):
    from .config import load_config

    cfg = load_config(_repo_relative_recipe(recipe), overrides)
    cfg.data.train_data = _repo_relative(cfg.data.train_data)
    cfg.data.eval_data = _repo_relative(cfg.data.eval_data)
    cfg.online.prompts = _repo_relative(cfg.online.prompts)
    cfg.run.eval_prompts = _repo_relative(cfg.run.eval_prompts)
    cfg.geometry.probes = _repo_relative(cfg.geometry.probes)
    cfg.geometry.regularizer_probes = _repo_relative(cfg.geometry.regularizer_probes)
    return cfg


def _train(build, cfg, what: str) -> int:
    run = build(cfg, log=_main_process_print)
    result = run.trainer.train()
    final = run.trainer.save_final()
    run.trainer.close()
    evals = result.eval_history
    if len(evals) > 1 and evals[0]["step"] == 0 and "eval/loss" in evals[0]:
        _main_process_print(f"held-out loss: {evals[0]['eval/loss']:.4f} before, "
                            f"{evals[-1]['eval/loss']:.4f} after")
    _main_process_print(
        f"done: {what}, {result.step} steps on {run.trainer.world} process(es); "
        f"model saved to {final}; metrics in "
        f"{Path(cfg.run.output_dir) / 'metrics.jsonl'}"
    )
    return 0


def cmd_train(recipe: str | None, overrides: list[str]) -> int:
    cfg = _load(recipe, overrides)
    if cfg.online.mode == "iterative":
        from .online import run_iterative

        result = run_iterative(cfg, log=_main_process_print)
        rewards = [r.get("eval/sample_reward") for r in result.rounds]
        if rewards and rewards[0] is not None:
            _main_process_print("mean reward of own samples on held-out prompts by round: "
                                + ", ".join(f"{r:+.4f}" for r in rewards))
        _main_process_print(f"done: iterative DPO, {len(result.rounds) - 1} round(s); model "
                            f"saved to {result.final}; rounds in "
                            f"{Path(cfg.run.output_dir) / 'iterations.jsonl'}")
        return 0
    if cfg.online.mode == "online":
        from .online import build_online_run

        return _train(build_online_run, cfg, "online DPO")
    from .pipeline import build_run

    return _train(build_run, cfg, "preference optimization")


def cmd_sft(recipe: str | None, overrides: list[str]) -> int:
    from .pipeline import build_sft_run

    return _train(build_sft_run, _load(recipe, overrides), "supervised fine-tuning")


def _repo_relative_recipe(recipe: str | None) -> str | None:
    """A recipe name shipped with dpokit (``sft_quickstart``) or a path."""
    if recipe is None or Path(recipe).exists():
        return recipe
    shipped = resources.files("dpokit") / "recipes" / f"{Path(recipe).stem}.yaml"
    return str(shipped) if shipped.is_file() else recipe


def cmd_quickstart(overrides: list[str]) -> int:
    from .config import load_config
    from .eval import comparison_table, generate
    from .pipeline import build_run

    started = time.perf_counter()
    recipe = resources.files("dpokit") / "recipes" / "quickstart.yaml"
    cfg = load_config(str(recipe), overrides)
    cfg.data.train_data = _repo_relative(cfg.data.train_data)
    cfg.data.eval_data = _repo_relative(cfg.data.eval_data)
    print(
        f"dpokit quickstart: DPO + LoRA on {cfg.model.name}, loss={cfg.loss.name}, "
        f"beta={cfg.loss.beta}"
    )
    run = build_run(cfg)
    print("evaluating the model before training ...")
    run.trainer.reference.prepare("eval", run.trainer.eval_set)  # cached: training reuses it
    before = run.trainer.evaluate()
    before_text = generate(run.policy, QUICKSTART_PROMPTS)
    result = run.trainer.train()
    after = result.eval_history[-1]  # the trainer evaluates at the end of training
    after_text = generate(run.policy, QUICKSTART_PROMPTS)
    final = run.trainer.save_final()
    print("\n" + comparison_table(before, after))
    print(
        f"\n(held-out: {len(run.eval_data)} pairs from sentences never seen in training; "
        f"50% is the no-skill level by construction)\n"
    )
    for prompt, b, a in zip(QUICKSTART_PROMPTS, before_text, after_text, strict=True):
        print(f"prompt: {prompt}\n  before: {b}\n  after:  {a}\n")
    minutes = (time.perf_counter() - started) / 60
    print(f"{result.step} steps in {minutes:.1f} min; LoRA adapter saved to {final}")
    return 0


def cmd_losses() -> int:
    from .losses import available_losses, loss_needs

    specs = {spec.name: spec for spec in available_losses().values()}
    for name in sorted(specs):
        spec = specs[name]
        print(f"{name:<18} {loss_needs(spec):<44} {spec.paper}")
        print(f"{'':<18} {spec.formula}")
        for p in spec.params:
            print(f"{'':<18}   {p.name} = {p.default:g} in {p.domain.describe()}: {p.help}")
    return 0


def cmd_env(args) -> int:
    import json

    from .train.hardware import describe, environment, resolve

    record = environment(resolve("auto", args.device))
    print(json.dumps(record, indent=1) if args.json else describe(record))
    return 0


def cmd_config() -> int:
    from .config import describe_config

    print(describe_config())
    return 0


def one_line(err: BaseException) -> str:
    """An exception as one line: its message's lines joined, a KeyError's quotes dropped.

    >>> one_line(ValueError("bad value\\n  in file x.yaml\\n"))
    'bad value / in file x.yaml'
    """
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " / ".join(lines) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpokit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (or DPOKIT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="preference optimization from a YAML recipe and "
                           "key=value overrides (`dpokit config` lists the keys)")
    train.add_argument("args", nargs="*", help="[RECIPE.yaml] key=value ...")
    sft = sub.add_parser("sft", help="supervised fine-tuning from a YAML recipe and overrides")
    sft.add_argument("args", nargs="*", help="[RECIPE.yaml] key=value ...")
    quick = sub.add_parser("quickstart", help="align the embedded SmolLM2, show before/after")
    quick.add_argument("overrides", nargs="*", help="key=value ...")
    from .cli_data import add_parsers

    add_parsers(sub)
    env = sub.add_parser("env", help="versions, the device and what it computes natively, the "
                         "precision auto picks and why, measured matmul speed per dtype")
    env.add_argument("--json", action="store_true", help="the record as JSON")
    env.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    sub.add_parser("losses", help="list the registered losses and their hyper-parameters")
    sub.add_parser("config", help="list every config field with its default and meaning")
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("DPOKIT_DEBUG", "") not in ("", "0")
    _quiet_libraries()
    from .core.signals import StopRequests
    from .train import Interrupted

    def warn(line: str) -> None:
        _main_process_print(f"dpokit: {line}", file=sys.stderr)

    try:
        with StopRequests(warn).installed():  # every phase of every command stops cleanly
            return _dispatch(args)
    except Interrupted as stop:
        if debug:
            raise
        _main_process_print(f"dpokit: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("dpokit: interrupted (no checkpoint saved since the last one)", file=sys.stderr)
        return 130
    except Exception as err:  # every failure a user sees is one line; --debug shows the rest
        if debug:
            raise
        print(f"dpokit: error: {one_line(err)}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from .cli_data import cmd_data, cmd_eval, cmd_harness, cmd_pairs, cmd_report

    if args.command in ("train", "sft"):
        recipe, overrides = _split_args(args.args)
        return (cmd_train if args.command == "train" else cmd_sft)(recipe, overrides)
    commands = {"quickstart": lambda: cmd_quickstart(args.overrides), "config": cmd_config,
                "pairs": lambda: cmd_pairs(args), "data": lambda: cmd_data(args),
                "eval": lambda: cmd_eval(args), "report": lambda: cmd_report(args),
                "harness": lambda: cmd_harness(args), "env": lambda: cmd_env(args),
                "losses": cmd_losses}
    return commands[args.command]()


if __name__ == "__main__":
    sys.exit(main())
