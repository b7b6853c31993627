"""``dpokit doctor RUN_DIR [RUN_DIR ...] [--json PATH]``: every health check over a finished or
crashed run: its ``metrics.jsonl`` (the complete lines; a line a kill cut short is skipped and
named), ``run.json`` (the loss) and the checkpoints kept. A table of findings with their
evidence and what to try; "no findings" when healthy; exit 0 either way.

    dpokit doctor outputs/run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CommandLineError, check_outputs, write_figures


def findings_of(folder: str | Path) -> tuple[list, list[str]]:
    from ..train.health import load_trace, run_checks

    if not (Path(folder) / "metrics.jsonl").is_file():
        raise CommandLineError(f"{folder}: no metrics.jsonl (is it a dpokit run folder?)")
    trace, skipped = load_trace(folder)
    return run_checks(trace), skipped


def add_parser(sub) -> None:
    doctor = sub.add_parser("doctor", help="health checks over a finished or crashed run: "
                            "likelihood displacement, length drift, over-fitting, reward scale, "
                            "reference mismatch, a frozen run, reward hacking")
    doctor.add_argument("runs", nargs="+", help="run folders (output_dir of dpokit train)")
    doctor.add_argument("--json", help="write the findings here")


def cmd_doctor(args: argparse.Namespace) -> int:
    check_outputs([str(Path(r) / "metrics.jsonl") for r in args.runs], [args.json])
    record = {}
    for folder in args.runs:
        findings, skipped = findings_of(folder)
        for line in skipped:
            print(f"skipped {line}")
        print(f"{folder}: {len(findings) or 'no'} finding{'s' if len(findings) != 1 else ''}")
        for f in findings:
            where = f" (step {f.step})" if f.step is not None else ""
            print(f"  [{f.severity}] {f.check}{where}: {f.finding}\n      try: {f.remedy}")
        record[str(folder)] = {"findings": [f.to_dict() for f in findings], "skipped": skipped}
    write_figures(args.json, record)
    return 0
