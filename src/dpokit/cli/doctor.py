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
    """The metric checks' findings, then the data's (the training and held-out files the run
    names, read as `dpokit data inspect` reads them), and the lines skipped."""
    from ..train.health import load_trace, run_checks

    if not any((Path(folder) / name).is_file() for name in ("metrics.jsonl", "run.json")):
        raise CommandLineError(f"{folder}: no metrics.jsonl or run.json (is it a dpokit run "
                               f"folder?)")
    trace, skipped = load_trace(folder)
    return run_checks(trace) + data_findings(trace.config.get("data") or {}), skipped


def data_findings(data: dict) -> list:
    """What `dpokit data inspect` warns of in a run's pairs, as findings (duplicates, answers
    that are the same, a length bias), and held-out rows that leak from training: a pair in
    both files, or a shared prompt where prompts are questions of their own (most rows of each
    file with a distinct prompt; prompts that are a few instructions shared by design, as the
    quickstart's, are not a leak, even when the training file is a handful of rows)."""
    from ..data.io import load_records
    from ..data.split import prompt_key
    from ..data.text.inspect import inspect_data
    from ..train.health import Finding

    train, held = data.get("train_data"), data.get("eval_data")
    if not train or not Path(train).is_file() or data.get("streaming"):
        return []
    report = inspect_data(train, None, None, data.get("max_length", 512),
                          data.get("max_prompt_length", 256))
    found = [Finding("data", "warning", None, f"{train}: {w}.", "`dpokit data inspect` shows "
                     "the rows; rebalance or drop them") for w in report.warnings
             if "exceed" not in w]  # (length limits: the run's own data report counts them)
    if not held or not Path(held).is_file():
        return found
    rows = [r.values for r in load_records(train)]
    prompts = {prompt_key(v.get("prompt", "")) for v in rows}
    pairs = {(prompt_key(v.get("prompt", "")), str(v.get("chosen")), str(v.get("rejected")))
             for v in rows}
    evaluation = [r.values for r in load_records(held)]
    same_pair = sum((prompt_key(v.get("prompt", "")), str(v.get("chosen")),
                     str(v.get("rejected"))) in pairs for v in evaluation)
    shared = sum(prompt_key(v.get("prompt", "")) in prompts for v in evaluation)
    held_prompts = {prompt_key(v.get("prompt", "")) for v in evaluation}
    # questions of their own: most rows of both files ask a prompt no other row asks
    questions = len(prompts) >= len(rows) / 2 and len(held_prompts) >= len(evaluation) / 2
    if same_pair or (shared and questions):
        what = (f"{same_pair} held-out pairs are training pairs" if same_pair else
                f"{shared} held-out rows ask a prompt that training asks too")
        found.append(Finding("data", "error", None, f"{held}: {what}: held-out figures "
                             f"overstate generalization.", "`dpokit data split` splits by "
                             "prompt, with no prompt in both files"))
    return found


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
