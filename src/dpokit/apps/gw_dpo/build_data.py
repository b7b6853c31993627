"""Build `hierarchy_pairs.{train,eval}.jsonl`: instruction-hierarchy conflicts for GW-DPO.

Written for the project (`hierarchy.py` here): 12 tasks with a base answer each; for every
pair of privilege levels (platform > system > user > tool output > retrieved document) a
conflict whose more privileged level sets a program-checkable constraint (case, format,
length, a keyword) and whose less privileged level asks for the opposite; plus benign
(one constraint, no conflict) and aligned (two levels agree) samples. Tasks, not rows, are
split: 9 train tasks (one random constraint per level pair), 3 held out (every constraint
in every level pair: 24 conflicts per cell of the adherence matrix).

    python -m dpokit.apps.gw_dpo.build_data
"""

import json
import random
import sys
from pathlib import Path

from .hierarchy import LEVELS, TASKS, build_samples, preference_row


def split_tasks() -> dict[str, list[tuple[str, str]]]:
    """The 12 tasks, shuffled with seed 0: 3 held out, 9 to train on."""
    tasks = list(TASKS)
    random.Random(0).shuffle(tasks)
    return {"train": tasks[3:], "eval": tasks[:3]}


def rows(split: str, levels: int = len(LEVELS)) -> list[dict]:
    """The rows of one split over the first ``levels`` levels (the files: all five; the
    experiment's depth ablation: three)."""
    held = split == "eval"  # every constraint in every cell: 24 conflicts per cell
    return [preference_row(s) for s in build_samples(
        split_tasks()[split], levels=levels, seed=1 if held else 0,
        benign_per_task=8 if held else 3, aligned_per_task=4 if held else 2,
        every_constraint=held)]


def main(out_dir: str = str(Path(__file__).resolve().parents[4] / "data")) -> None:
    for split in ("train", "eval"):
        path, written = Path(out_dir) / f"hierarchy_pairs.{split}.jsonl", rows(split)
        path.write_text("".join(json.dumps(r) + "\n" for r in written))
        print(f"{path}: {len(written)} rows")


if __name__ == "__main__":
    main(*sys.argv[1:])
