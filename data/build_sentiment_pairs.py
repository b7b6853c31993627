"""Build `sentiment_pairs.jsonl` from the Pang-Lee sentence polarity sample.

Source: `gensim/test/test_data/pang_lee_polarity.cor` in the PyPI wheel `gensim==4.4.0`
(200 human-labelled movie-review sentences, 100 positive and 100 negative, from
Pang & Lee's sentence polarity dataset v1.0). See `data/README.md` for licence notes.

Each pair asks for a review sentence of a given polarity; the chosen answer is a real
sentence of that polarity and the rejected one a real sentence of the other, of similar
length. Every sentence appears once as chosen and once as rejected (under the opposite
instruction), so a model that ignores the instruction scores exactly 50% on the ranking task.

    python data/build_sentiment_pairs.py PATH/TO/pang_lee_polarity.cor
"""

import json
import random
import sys
from pathlib import Path

PROMPTS = {
    "pos": [
        "Write one sentence from a positive movie review.",
        "Give me a short, enthusiastic sentence about a film you liked.",
        "In one sentence, praise a movie.",
    ],
    "neg": [
        "Write one sentence from a negative movie review.",
        "Give me a short, critical sentence about a film you disliked.",
        "In one sentence, pan a movie.",
    ],
}


def clean(text: str) -> str:
    text = " ".join(text.split())
    for a, b in ((" ,", ","), (" .", "."), (" ;", ";"), (" :", ":"), (" !", "!"), (" ?", "?"),
                 (" 's", "'s"), (" n't", "n't"), ("( ", "("), (" )", ")")):
        text = text.replace(a, b)
    return text[:1].upper() + text[1:]


def main(source: str, out_dir: str = str(Path(__file__).parent)) -> None:
    sentences = {"pos": [], "neg": []}
    for line in Path(source).read_text(encoding="cp1252").splitlines():
        label, _, text = line.partition(" ")
        sentences[label.removeprefix("__label__")].append(clean(text))
    rng = random.Random(0)
    for label in sentences:
        rng.shuffle(sentences[label])
    n_eval = 20  # held-out sentences of each polarity: never seen in training pairs
    splits = {
        "train": {k: v[n_eval:] for k, v in sentences.items()},
        "eval": {k: v[:n_eval] for k, v in sentences.items()},
    }
    for split, pools in splits.items():
        rows = []
        # Pair sentences of similar length, so that a pair is decided by its content (and the
        # instruction), not by one sentence being three times longer than the other.
        pos, neg = sorted(pools["pos"], key=len), sorted(pools["neg"], key=len)
        for i in range(len(pos)):
            # A positive request: chosen positive, rejected negative; and the mirror pair.
            for want, good, bad in (("pos", pos[i], neg[i]), ("neg", neg[i], pos[i])):
                rows.append({"prompt": rng.choice(PROMPTS[want]), "chosen": good, "rejected": bad})
        rng.shuffle(rows)
        path = Path(out_dir) / f"sentiment_pairs.{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} pairs to {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
