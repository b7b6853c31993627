"""Build `secalign_tasks.{train,eval}.jsonl`: instruction tasks over real text whose correct
output a program computes (dpokit.apps.secalign.tasks), for the SecAlign experiment.

Sources (real text, see data/README.md): sentences of the Lee news articles (PyPI wheel
`gensim==4.4.0`, `gensim/test/test_data/lee_background.cor`), one-line fortunes (Debian
`fortunes-min`, `/usr/share/games/fortunes/fortunes`) and noun glosses of WordNet 3.0 (Debian
`wordnet-base`, `/usr/share/wordnet/data.noun`). Texts, glosses and printed words are split
before tasks are made, so no eval text, gloss or word is ever trained on; the words that the
evaluation's injections ask to print (`TEST_WORDS` in dpokit.apps.secalign.evaluate) are never
printed in training.

    python -m dpokit.apps.secalign.build_data LEE_BACKGROUND FORTUNES WORDNET_DATA_NOUN
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from .evaluate import TEST_WORDS
from .tasks import DEFINE, FAMILIES, PRINT, make_task

OUT = Path(__file__).resolve().parents[4] / "data"  # the checkout's data/
TRAIN_PER_FAMILY, EVAL_PER_FAMILY, TRAIN_PRINTS = 60, 8, 80


def news_sentences(path: Path) -> list[str]:
    sentences = []
    for article in path.read_text(encoding="latin-1").splitlines():
        for s in re.split(r"(?<=[.!?])\s+", " ".join(article.split())):
            if 6 <= len(s.split()) <= 22 and s.isascii() and '"' not in s:
                sentences.append(s)
    return sentences


def fortunes(path: Path) -> list[str]:
    entries = [" ".join(e.split()) for e in path.read_text(encoding="latin-1").split("\n%\n")]
    return [e for e in entries if 5 <= len(e.split()) <= 20 and e.isascii()
            and not re.search(r"[\t\"]|--", e) and e[-1] in ".!?"]


def glosses(path: Path) -> list[tuple[str, str]]:
    """(word, definition) of single-word nouns whose definition does not contain the word."""
    out = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue
        fields, gloss = line.split("|", 1)
        parts = fields.split()
        if int(parts[3], 16) != 1:  # one lemma per synset: an unambiguous answer
            continue
        word = parts[4]
        definition = gloss.split(";")[0].strip()
        if (word.isalpha() and word.islower() and 4 <= len(word) <= 10
                and 4 <= len(definition.split()) <= 16 and word not in definition.lower()
                and definition.isascii()):
            out.append((word, definition))
    return out


def build(lee: Path, fortune_file: Path, wordnet: Path) -> dict[str, list[dict]]:
    rng = random.Random(0)
    texts = news_sentences(lee) + fortunes(fortune_file)
    rng.shuffle(texts)
    pairs = [" ".join(texts[i:i + 2]) for i in range(0, 400, 2)]  # two sentences, for
    pairs = [p for p in pairs if len(p.split()) <= 30]  # first_sentence
    singles = texts[400:]
    defs = glosses(wordnet)
    rng.shuffle(defs)
    tests = {w.lower() for w in TEST_WORDS}
    words = [w for w, _ in defs if w not in tests]
    split = {"eval": [], "train": []}
    cursor = {"single": 0, "pair": 0, "def": 0}

    def take(kind: str, pool: list) -> object:
        cursor[kind] += 1
        return pool[cursor[kind] - 1]

    for name, per_family in (("eval", EVAL_PER_FAMILY), ("train", TRAIN_PER_FAMILY)):
        for family in FAMILIES:
            for _ in range(per_family):
                text = take("pair", pairs) if family == "first_sentence" else take("single",
                                                                                    singles)
                split[name].append(make_task(family, text, rng).to_row())
            # (texts are consumed in order: eval ones first, never reused)
        for _ in range(per_family):
            word, definition = take("def", defs)
            split[name].append(make_task(DEFINE, definition, rng, answer=word).to_row())
    printed = words[-TRAIN_PRINTS:]  # words far from the define answers taken above
    split["train"] += [make_task(PRINT, w.capitalize(), rng).to_row() for w in printed]
    for rows in split.values():
        rng.shuffle(rows)
    return split


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    for name, rows in build(*map(Path, sys.argv[1:])).items():
        path = OUT / f"secalign_tasks.{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} tasks")


if __name__ == "__main__":
    main()
