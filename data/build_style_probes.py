"""Build `style_probes.{train,eval}.jsonl`: one content written in several surface styles.

The probe set of the Style TDI (Rajput 2026, "The Matching Principle"): a class is one
content, its members the same content in different styles. A representation that ignores
style puts every member of a class at one point (Style TDI 0); DPO that makes the model's
hidden states care about style raises it.

Sources (real text, see data/README.md): the Pang-Lee movie-review sentences and the first
sentences of the Lee news articles, both in the PyPI wheel `gensim==4.4.0`
(`gensim/test/test_data/`), rewritten by the programmatic styles below; plus contents written
for the project with hand-written variants (`HAND_WRITTEN`). Contents, not rows, are split:
the regularizer trains on `train` contents, the monitor measures on `eval` contents.

    python data/build_style_probes.py PATH/TO/gensim/test/test_data
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from build_sentiment_pairs import clean

CONTRACTIONS = {"it is": "it's", "do not": "don't", "does not": "doesn't", "is not": "isn't",
                "are not": "aren't", "can not": "can't", "cannot": "can't", "will not": "won't",
                "that is": "that's", "there is": "there's", "was not": "wasn't",
                "have not": "haven't", "they are": "they're", "you are": "you're",
                "would not": "wouldn't", "has not": "hasn't", "did not": "didn't"}
COMMON_OPENERS = {"The", "A", "An", "This", "That", "It", "It's", "There", "These", "Those",
                  "Its", "Even", "But", "And", "If", "As", "In", "On", "For", "Such", "What",
                  "Some", "Most", "One", "He", "She", "They", "We", "You", "His", "Her", "Their"}
EXPANSIONS = {v: k for k, v in CONTRACTIONS.items()} | {"can't": "cannot", "n't": " not"}


def _sub_words(text: str, table: dict[str, str]) -> str:
    for a in sorted(table, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(a)}\b", table[a], text, flags=re.IGNORECASE)
    return text


def _body(text: str) -> str:
    """The sentence without its final punctuation, first letter lowered unless a name."""
    text = text.rstrip(" .!?")
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if first in COMMON_OPENERS else text


def lowercase(text: str) -> str:
    return text.lower()


def uppercase(text: str) -> str:
    return text.upper()


def no_punctuation(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s'-]", " ", text).split())


def formal(text: str) -> str:
    """Higher register: contractions spelled out, an impersonal frame."""
    body = _sub_words(_body(text), EXPANSIONS).replace("  ", " ")
    if body[:1].isupper():  # a name or an uncommon opener keeps its capital after a colon
        return f"To state it formally: {body}."
    return f"It may be observed that {body}."


def casual(text: str) -> str:
    """Lower register: contractions, a spoken opener, an exclamation."""
    body = _sub_words(_body(text), CONTRACTIONS)
    return f"honestly... {body}!" if body[:1].isupper() else f"honestly, {body}!"


def reordered(text: str) -> str | None:
    """Clauses swapped where the meaning holds ("A because B" -> "Because B, A"); None when
    the sentence has no such joint."""
    body = text.rstrip(" .!?")
    for joint in (" because ", ", although "):
        if joint in body:
            a, b = body.split(joint, 1)
            if len(a.split()) >= 3 and len(b.split()) >= 3:
                word = joint.strip(" ,")
                return f"{word.capitalize()} {b.rstrip(',')}, {_body(a)}."
    if ", but " in body:
        a, b = body.split(", but ", 1)
        if len(a.split()) >= 3 and len(b.split()) >= 3:
            return f"{b[:1].upper() + b[1:]}, though {_body(a)}."
    return None


STYLES = {"lowercase": lowercase, "uppercase": uppercase, "no_punctuation": no_punctuation,
          "formal": formal, "casual": casual, "reordered": reordered}

# Contents written for the project, each with hand-written variants in other styles.
HAND_WRITTEN = [
    ("The film is far too long and most of its jokes fall flat.",
     ["Way too long, and hardly any of the jokes land.",
      "The picture runs excessively long, and the majority of its humour fails to land.",
      "TOO LONG. JOKES DON'T WORK.",
      "Most of its jokes fall flat, and the film is far too long."]),
    ("The lead actress gives a warm and convincing performance.",
     ["She's great in it, so warm and believable!",
      "The principal actress delivers a performance of considerable warmth and conviction.",
      "warm, convincing lead performance",
      "A warm and convincing performance comes from the lead actress."]),
    ("The train to the airport was cancelled because of the storm.",
     ["ugh, storm killed the airport train",
      "Owing to the storm, the airport rail service was cancelled.",
      "Because of the storm, the train to the airport was cancelled.",
      "THE AIRPORT TRAIN WAS CANCELLED DUE TO THE STORM."]),
    ("Prices at the market rose sharply this week.",
     ["Stuff at the market got way pricier this week.",
      "Market prices increased markedly over the course of this week.",
      "This week, prices at the market rose sharply.",
      "market prices up sharply this week"]),
    ("The children planted tomatoes in the school garden.",
     ["the kids put tomatoes in the school garden :)",
      "Tomatoes were planted by the pupils in the school garden.",
      "In the school garden, the children planted tomatoes.",
      "KIDS PLANTED TOMATOES IN THE SCHOOL GARDEN"]),
    ("The soundtrack is beautiful, but the story makes no sense.",
     ["Great music, shame the plot's nonsense.",
      "While the score is beautiful, the narrative lacks coherence.",
      "The story makes no sense, though the soundtrack is beautiful.",
      "soundtrack: beautiful. story: makes no sense."]),
    ("Heavy rain flooded several roads in the north of the city.",
     ["loads of rain, a bunch of roads up north got flooded",
      "Several thoroughfares in the northern part of the city were flooded by heavy rainfall.",
      "In the north of the city, several roads were flooded by heavy rain.",
      "HEAVY RAIN FLOODS ROADS IN NORTH OF CITY"]),
    ("The new library will open to the public next month.",
     ["new library's opening next month!",
      "The newly constructed library is scheduled to open to the public next month.",
      "Next month, the new library opens to the public.",
      "new library open to public next month"]),
    ("I could not stop laughing during the second half.",
     ["couldn't stop laughing in the second half lol",
      "I found myself unable to stop laughing throughout the second half.",
      "During the second half, I could not stop laughing.",
      "SECOND HALF HAD ME LAUGHING NONSTOP"]),
    ("The minister resigned after the report was published.",
     ["minister quit once the report came out",
      "Following the publication of the report, the minister tendered a resignation.",
      "After the report was published, the minister resigned.",
      "MINISTER RESIGNS AFTER REPORT PUBLISHED"]),
    ("The dialogue feels stiff and the characters never come alive.",
     ["Clunky lines, and the characters are just cardboard.",
      "The dialogue is stilted, and the characters are never brought to life.",
      "The characters never come alive, and the dialogue feels stiff.",
      "stiff dialogue; lifeless characters"]),
    ("Scientists found a new species of frog in the rainforest.",
     ["they found a new kind of frog in the rainforest!",
      "Researchers have identified a previously unknown species of frog in the rainforest.",
      "In the rainforest, scientists found a new species of frog.",
      "NEW FROG SPECIES FOUND IN RAINFOREST"]),
    ("The ending is moving and stays with you for days.",
     ["that ending though, still thinking about it days later",
      "The conclusion is deeply moving and lingers in the memory for days.",
      "For days, the moving ending stays with you.",
      "MOVING ENDING. STAYS WITH YOU."]),
    ("The bridge will be closed for repairs until Friday.",
     ["bridge is shut for repairs till friday",
      "The bridge shall remain closed for repair works until Friday.",
      "Until Friday, the bridge will be closed for repairs.",
      "BRIDGE CLOSED FOR REPAIRS UNTIL FRIDAY"]),
    ("The animation is gorgeous and every frame is full of detail.",
     ["Gorgeous animation, so much detail in every frame!",
      "The animation is exquisite, with each frame rich in detail.",
      "Every frame is full of detail, and the animation is gorgeous.",
      "gorgeous animation, detailed frames"]),
    ("The team won the final after a penalty shootout.",
     ["they won the final on penalties!!",
      "The team secured victory in the final following a penalty shootout.",
      "After a penalty shootout, the team won the final.",
      "TEAM WINS FINAL ON PENALTIES"]),
]


def _sentences(path: Path, encoding: str = "utf-8") -> list[str]:
    return path.read_text(encoding=encoding).splitlines()


def build(test_data: Path) -> list[dict]:
    rng = random.Random(0)
    contents: list[tuple[str, str]] = []
    reviews = [clean(line.partition(" ")[2])
               for line in _sentences(test_data / "pang_lee_polarity.cor", "cp1252")]
    reviews = [s for s in reviews if 8 <= len(s.split()) <= 24 and s.isascii()]
    rng.shuffle(reviews)
    contents += [("pang_lee", s) for s in reviews[:40]]
    news = []
    for article in _sentences(test_data / "lee_background.cor", "latin-1"):
        first = re.split(r"(?<=[.!?])\s+", article.strip())[0]
        if 10 <= len(first.split()) <= 28 and first.isascii():
            news.append(first)
    rng.shuffle(news)
    contents += [("lee_news", s) for s in news[:24]]
    rows = []
    for i, (source, text) in enumerate(contents):
        cid = f"{source}-{i:03d}"
        rows.append({"content": cid, "style": "original", "text": text, "source": source})
        for style, rewrite in STYLES.items():
            variant = rewrite(text)
            if variant and variant != text:
                rows.append({"content": cid, "style": style, "text": variant,
                             "source": f"{source}+{style}"})
    for j, (text, variants) in enumerate(HAND_WRITTEN):
        cid = f"hand-{j:03d}"
        rows.append({"content": cid, "style": "original", "text": text, "source": "hand"})
        for k, variant in enumerate(variants):
            rows.append({"content": cid, "style": f"hand_{k}", "text": variant,
                         "source": "hand"})
    return rows


def main(test_data: str, out_dir: str = str(Path(__file__).parent)) -> None:
    rows = build(Path(test_data))
    ids = sorted({r["content"] for r in rows})
    random.Random(1).shuffle(ids)
    eval_ids = set(ids[: len(ids) // 2])
    for split in ("train", "eval"):
        keep = [r for r in rows if (r["content"] in eval_ids) == (split == "eval")]
        path = Path(out_dir) / f"style_probes.{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        print(f"{path}: {len({r['content'] for r in keep})} contents, {len(keep)} rows")


if __name__ == "__main__":
    main(*sys.argv[1:])
