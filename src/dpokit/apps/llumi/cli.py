"""LLUMI on the command line (registered through the ``dpokit.apps`` entry point):

    dpokit pairs llumi votes.jsonl --model generation --stage sft --out gen_sft.jsonl
"""

from __future__ import annotations

import argparse

from ...cli.common import read
from ...cli.extensions import Extensions


def register(cli: Extensions) -> None:
    cli.add_pair_kind("llumi", "vote pairs -> LLUMI's SFT or DPO1 rows of the generation or "
                      "the improvement model", _arguments, stage_rows)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="llumi_model", required=True,
                        choices=("generation", "improvement"),
                        help="the model the rows train (post -> reply, or post + draft -> "
                             "improved reply)")
    parser.add_argument("--stage", required=True, choices=("sft", "dpo1"))


def stage_rows(args: argparse.Namespace) -> int:
    from ...data.builders import write_rows
    from ...data.io import DataError
    from .stages import generation_rows, improvement_rows

    pairs = []
    for record in read(args.inputs):
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(record.values.get(name), str):
                raise DataError(record.source, record.row, name, "missing or not a string "
                                "(vote pairs from `dpokit pairs votes`)")
        pairs.append(record.values)
    make = generation_rows if args.llumi_model == "generation" else improvement_rows
    rows = make(pairs)["sft" if args.stage == "sft" else "dpo"]
    print(f"{write_rows(rows, args.out)}: {len(rows)} {args.llumi_model} {args.stage} rows "
          f"from {len(pairs)} vote pairs")
    return 0
