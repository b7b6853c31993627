"""SecAlign on the command line (registered through the ``dpokit.apps`` entry point):

    dpokit pairs injection data/secalign_tasks.train.jsonl --out secalign.jsonl
    dpokit eval MODEL --injection data/secalign_tasks.eval.jsonl [--gcg-steps 50]
"""

from __future__ import annotations

import argparse

from ...cli.common import add_fields, number, settings_from, write_figures
from ...cli.extensions import Extensions
from ...core.types import NON_NEGATIVE


def register(cli: Extensions) -> None:
    cli.add_pair_kind("injection", "instruction tasks -> SecAlign pairs (or StruQ / clean SFT "
                      "rows) with instructions injected into the data", _pair_arguments,
                      injection_pairs)
    cli.add_eval_mode("injection", "prompt-injection tasks", _eval_arguments, evaluate)


def _pair_arguments(parser: argparse.ArgumentParser) -> None:
    from .builder import InjectionSettings

    add_fields(parser, InjectionSettings)


def injection_pairs(args: argparse.Namespace) -> int:
    from ...data.builders import write_rows
    from .builder import InjectionSettings, injection_rows
    from .tasks import load_tasks

    tasks = [t for path in args.inputs for t in load_tasks(path)]
    rows = injection_rows(tasks, settings_from(InjectionSettings, args))
    print(f"{write_rows(rows, args.out)}: {len(rows)} {args.rows} rows from {len(tasks)} tasks")
    return 0


def _eval_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--injection", help="prompt-injection tasks (family, instruction, input, "
                    "output; data/secalign_tasks.eval.jsonl): utility and attack success rates")
    ev.add_argument("--frontend", choices=["textual", "struq"], default="struq",
                    help="--injection: the prompt format (struq: reserved delimiter tokens)")
    ev.add_argument("--gcg-steps", type=number(int, NON_NEGATIVE), default=0,
                    help="--injection: also a universal GCG suffix of this many steps")


def evaluate(args: argparse.Namespace) -> int:
    """``dpokit eval MODEL --injection TASKS``: SecAlign's figures (ASR per attack, utility)."""
    from ...runs import load_policy
    from .evaluate import evaluate_injection
    from .gcg import GCGSettings
    from .tasks import load_tasks

    tasks = load_tasks(args.injection)  # bad rows before the model
    policy = load_policy(args.model)
    gcg = GCGSettings(steps=args.gcg_steps) if args.gcg_steps else None
    report = evaluate_injection(policy.model, policy.tokenizer, tasks, args.frontend, gcg=gcg)
    print(report.table())
    if report.gcg is not None:
        print(f"GCG suffix: {report.gcg.suffix!r}")
    write_figures(args.json, {"model": args.model, "frontend": args.frontend,
                              "utility": report.utility, "asr": report.asr,
                              "examples": report.examples,
                              "gcg_suffix": report.gcg.suffix if report.gcg else None})
    return 0
