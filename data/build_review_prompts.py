"""Build review_prompts.{train,eval}.jsonl: requests for a positive or negative one-sentence
review of a kind of film, for sampling and online / iterative DPO. The held-out prompts use
other kinds of film and another phrasing, so their reward measures generalization.

    python data/build_review_prompts.py
"""

import json
from pathlib import Path

TRAIN_KINDS = ["comedy", "thriller", "documentary", "romance", "horror film", "western",
               "musical", "war film", "science-fiction film", "family film", "crime drama",
               "biopic", "courtroom drama", "road movie", "disaster movie", "spy film",
               "martial-arts film", "teen comedy", "fantasy epic", "psychological drama"]
EVAL_KINDS = ["animated film", "heist movie", "sports drama", "mystery", "superhero movie",
              "period drama", "zombie movie", "political satire"]


def main() -> None:
    here = Path(__file__).parent
    train = [{"prompt": f"Write one sentence from a {mood} review of a {kind}."}
             for kind in TRAIN_KINDS for mood in ("positive", "negative")]
    held = [{"prompt": f"In a single sentence, give a {mood} opinion of a {kind} you watched."}
            for kind in EVAL_KINDS for mood in ("positive", "negative")]
    for name, rows in (("train", train), ("eval", held)):
        path = here / f"review_prompts.{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
