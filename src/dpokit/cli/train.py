"""``dpokit train / sft / quickstart / losses / config / env``: the commands that train, and
the ones that say what training can be set to."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from .common import main_process_print, repo_relative, shipped_recipe

QUICKSTART_PROMPTS = [
    "Write one sentence from a positive movie review.",
    "Write one sentence from a negative movie review.",
    "In one sentence, pan a movie.",
]


def load(recipe: str | None, overrides: list[str]):
    """The config of a recipe (a path or a shipped name) and ``key=value`` overrides, its
    path fields (declared ``path=True``) found from anywhere for shipped recipes."""
    from ..config import load_config

    cfg = with_repo_paths(load_config(shipped_recipe(recipe), overrides))
    if cfg.derived:  # the run's first line: defaults that followed what was set
        main_process_print(f"config: {'; '.join(cfg.derived)}")
    return cfg


def with_repo_paths(cfg):
    from ..config.schema import fields_where

    for section, name in fields_where("path"):
        part = getattr(cfg, section)
        setattr(part, name, repo_relative(getattr(part, name)))
    return cfg


def _train(build, cfg, what: str) -> int:
    run = build(cfg, log=main_process_print)
    result = run.trainer.train()
    final = run.trainer.save_final()
    run.trainer.close()
    evals = result.eval_history
    if len(evals) > 1 and evals[0]["step"] == 0 and "eval/loss" in evals[0]:
        main_process_print(f"held-out loss: {evals[0]['eval/loss']:.4f} before, "
                            f"{evals[-1]['eval/loss']:.4f} after")
    main_process_print(
        f"done: {what}, {result.step} steps on {run.trainer.world} process(es); "
        f"model saved to {final}; metrics in "
        f"{Path(cfg.run.output_dir) / 'metrics.jsonl'}"
    )
    return 0


def cmd_train(recipe: str | None, overrides: list[str]) -> int:
    cfg = load(recipe, overrides)
    if cfg.online.mode == "iterative":
        from ..runs.online import run_iterative

        result = run_iterative(cfg, log=main_process_print)
        rewards = [r.get("eval/sample_reward") for r in result.rounds]
        if rewards and rewards[0] is not None:
            main_process_print("mean reward of own samples on held-out prompts by round: "
                                + ", ".join(f"{r:+.4f}" for r in rewards))
        main_process_print(f"done: iterative DPO, {len(result.rounds) - 1} round(s); model "
                            f"saved to {result.final}; rounds in "
                            f"{Path(cfg.run.output_dir) / 'iterations.jsonl'}")
        return 0
    from ..runs import builder_for

    what = "online DPO" if cfg.online.mode == "online" else "preference optimization"
    return _train(builder_for(cfg, "train"), cfg, what)


def cmd_sft(recipe: str | None, overrides: list[str]) -> int:
    from ..runs import builder_for

    cfg = load(recipe, overrides)
    return _train(builder_for(cfg, "sft"), cfg, "supervised fine-tuning")


def cmd_quickstart(overrides: list[str]) -> int:
    from ..eval import comparison_table, generate
    from ..runs.causal_lm import build_run

    started = time.perf_counter()
    recipe = resources.files("dpokit") / "recipes" / "quickstart.yaml"
    cfg = load(str(recipe), overrides)  # (its first line says what followed)
    print(
        f"dpokit quickstart: DPO + LoRA on {cfg.model.name}, loss={cfg.loss.name}, "
        f"beta={cfg.loss.beta}"
    )
    if not (cfg.run.eval_before and cfg.data.eval_data):
        raise ValueError("the quickstart compares the held-out figures before and after "
                         "training: keep eval_before=true and an eval_data file")
    run = build_run(cfg)
    before_text = generate(run.policy, QUICKSTART_PROMPTS)
    result = run.trainer.train()  # evaluates at step 0 (eval_before, in metrics.jsonl) and last
    before, after = baseline(result.eval_history, cfg.run.output_dir), result.eval_history[-1]
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


def baseline(evals: list[dict], output_dir: str) -> dict:
    """The step-0 evaluation: this session's first, or, for a resumed run (which does not
    repeat it), the step-0 evaluation row of ``metrics.jsonl``."""
    if evals and evals[0].get("step") == 0:
        return evals[0]
    from ..train.health import is_eval_row
    from ..train.metrics import read_metrics

    rows = read_metrics(Path(output_dir) / "metrics.jsonl").rows
    row = next((r for r in rows if is_eval_row(r) and r.get("step") == 0), None)
    if row is None:
        raise ValueError(f"{output_dir}: no baseline evaluation (step 0) in metrics.jsonl to "
                         f"compare with")
    return row


def cmd_losses() -> int:
    from ..losses import available_losses, loss_needs

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

    from ..core.hardware import describe, environment, resolve

    record = environment(resolve("auto", args.device))
    print(json.dumps(record, indent=1) if args.json else describe(record))
    return 0


def cmd_config() -> int:
    from ..config import describe_config

    print(describe_config())
    return 0
