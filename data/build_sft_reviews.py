"""Build `sft_reviews.{train,eval}.jsonl` from the shipped sentiment pairs.

Each SFT row is a pair's prompt and its chosen sentence: a real movie-review sentence of the
requested polarity (Pang & Lee, see `data/README.md`). The eval rows come from the eval pairs,
so their sentences never appear in training.

    python data/build_sft_reviews.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    for split in ("train", "eval"):
        rows = [json.loads(line) for line in (HERE / f"sentiment_pairs.{split}.jsonl").open()]
        path = HERE / f"sft_reviews.{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"prompt": row["prompt"], "completion": row["chosen"]},
                                   ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
