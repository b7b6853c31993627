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

from .hierarchy import TASKS, build_samples, preference_row


def main(out_dir: str = str(Path(__file__).resolve().parents[4] / "data")) -> None:
    tasks = list(TASKS)
    random.Random(0).shuffle(tasks)
    for split, part, seed in (("train", tasks[3:], 0), ("eval", tasks[:3], 1)):
        held = split == "eval"  # every constraint in every cell: 24 conflicts per cell
        rows = [preference_row(s) for s in build_samples(
            part, seed=seed, benign_per_task=8 if held else 3,
            aligned_per_task=4 if held else 2, every_constraint=held)]
        path = Path(out_dir) / f"hierarchy_pairs.{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main(*sys.argv[1:])
