"""The ``dpokit`` command.

    dpokit quickstart [key=value ...]        DPO + LoRA on the embedded SmolLM2, before/after
    dpokit train [RECIPE.yaml] [key=value ...]   preference optimization (DPO and its family)
    dpokit sft [RECIPE.yaml] [key=value ...]     supervised fine-tuning
    dpokit pairs votes|scored|sample|failures IN... --out OUT    build preference pairs
    dpokit data inspect|split FILE            look at a dataset; split it by prompt
    dpokit eval MODEL --pairs F --prompts F --reward R   held-out figures vs the reference
    dpokit harness MODEL --task-files DIR     lm-evaluation-harness tasks (local or by name)
    dpokit report RUN_DIR [RUN_DIR ...]       an HTML page of one run or several side by side
    dpokit doctor RUN_DIR [RUN_DIR ...]       health checks: what went wrong in a run, and why
    dpokit losses                             the registered losses and their hyper-parameters
    dpokit config                             every config field, its default and meaning
    dpokit env                                versions, device, the precision auto picks, speed

Applications add pair kinds, eval modes and commands through the ``dpokit.apps`` entry points
(:mod:`dpokit.cli.extensions`): ``dpokit pairs injection|llumi``, ``dpokit eval --injection``.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import CommandLineError, Parser, main_process_print, one_line
from .data import add_parsers, cmd_data, cmd_eval, cmd_harness, cmd_pairs, cmd_report
from .doctor import add_parser as add_doctor
from .doctor import cmd_doctor
from .extensions import Extensions, load_extensions
from .train import cmd_config, cmd_env, cmd_losses, cmd_quickstart, cmd_sft, cmd_train


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


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    overrides = list(args)
    recipe = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    return recipe, overrides


def build_parser(extensions: Extensions) -> Parser:
    """The whole command line: the library's commands and what applications registered."""
    parser = Parser(prog="dpokit", description=__doc__,
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
    add_parsers(sub, extensions)
    add_doctor(sub)
    for name, command in extensions.commands.items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    env = sub.add_parser("env", help="versions, the device and what it computes natively, the "
                         "precision auto picks and why, measured matmul speed per dtype")
    env.add_argument("--json", action="store_true", help="the record as JSON")
    env.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    sub.add_parser("losses", help="list the registered losses and their hyper-parameters")
    sub.add_parser("config", help="list every config field with its default and meaning")
    return parser


def main(argv: list[str] | None = None) -> int:
    extensions = load_extensions()
    try:
        args = build_parser(extensions).parse_args(argv)
    except CommandLineError as err:  # a bad option or value: one line, before any work
        print(f"dpokit: error: {err}", file=sys.stderr)
        return 2
    debug = args.debug or os.environ.get("DPOKIT_DEBUG", "") not in ("", "0")
    _quiet_libraries()
    from ..core.signals import StopRequests
    from ..train import Interrupted

    def warn(line: str) -> None:
        main_process_print(f"dpokit: {line}", file=sys.stderr)

    try:
        with StopRequests(warn).installed():  # every phase of every command stops cleanly
            return _dispatch(args, extensions)
    except Interrupted as stop:
        if debug:
            raise
        main_process_print(f"dpokit: {stop}", file=sys.stderr)
        return stop.exit_code
    except BrokenPipeError:  # `dpokit losses | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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


def _dispatch(args, extensions: Extensions) -> int:
    if args.command in extensions.commands:
        return extensions.commands[args.command].run(args)
    if args.command in ("train", "sft"):
        recipe, overrides = split_args(args.args)
        return (cmd_train if args.command == "train" else cmd_sft)(recipe, overrides)
    commands = {"quickstart": lambda: cmd_quickstart(args.overrides), "config": cmd_config,
                "pairs": lambda: cmd_pairs(args, extensions), "data": lambda: cmd_data(args),
                "eval": lambda: cmd_eval(args, extensions), "report": lambda: cmd_report(args),
                "harness": lambda: cmd_harness(args), "env": lambda: cmd_env(args),
                "doctor": lambda: cmd_doctor(args),
                "losses": cmd_losses}
    return commands[args.command]()
