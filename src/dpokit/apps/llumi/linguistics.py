"""LLUMI's linguistic analyses of replies beside the rubric: whether an improved reply keeps
its draft's intent (embedding similarity, the draft's content words kept), lexical diversity
(type-token ratio, distinct bigrams over all replies) and stylistic accommodation to the
post (language style matching over function-word categories, Ireland and Pennebaker 2010).

    >>> key_content_kept("I keep losing sleep over exams.", "Losing sleep before an exam?")
    0.75
    >>> # pronouns 1/3 vs 0 -> 0; articles 0 vs 1/4 -> 0; auxiliaries 1/3 vs 1/4 -> 0.857;
    >>> # the 5 categories neither uses -> 1: (0 + 0 + 0.857 + 5) / 8
    >>> round(style_matching("I am sad.", "The rain is sad."), 3)
    0.732
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

STOPWORDS = frozenset("""a about after again all also am an and any are as at be been before
being but by can could did do does doing down for from had has have having he her here him his
how i if in into is it its just me more most my no not now of off on once only or other our out
over own same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who why will with
would you your yours""".split())
# function-word categories (LIWC's style categories, short lists)
STYLE = {
    "personal pronouns": "i me my mine myself we us our you your yours he him his she her they "
                         "them their",
    "impersonal pronouns": "it its this that these those something anything everything nothing",
    "articles": "a an the",
    "prepositions": "in on at to for with from of about into over after before through by",
    "auxiliary verbs": "am is are was were be been being have has had do does did will would "
                       "can could should may might must",
    "conjunctions": "and but or so because if while although",
    "negations": "no not never nothing nobody none cannot don't can't won't isn't",
    "adverbs": "very really just so too also only still even always never",
}
_CATEGORIES = {name: frozenset(words.split()) for name, words in STYLE.items()}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def content_words(text: str) -> set[str]:
    """Lower-case words of 4+ letters that are not function words."""
    return {w for w in words(text) if len(w) >= 4 and w not in STOPWORDS}


def stem(word: str) -> str:
    """A crude suffix strip, enough to match 'exams' with 'exam' and 'helped' with 'help'."""
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def key_content_kept(draft: str, reply: str) -> float:
    """Share of the draft's content words (stemmed) the reply still has; 1.0 for a draft
    without any."""
    key = {stem(w) for w in content_words(draft)}
    return len(key & {stem(w) for w in content_words(reply)}) / len(key) if key else 1.0


def draft_similarity(drafts: Sequence[str], replies: Sequence[str],
                     embed: Callable[[Sequence[str]], torch.Tensor]) -> list[float]:
    """Cosine of each reply to its draft under ``embed`` (unit vectors, e.g. MiniLM), >= 0."""
    d, r = embed(list(drafts)), embed(list(replies))  # (N, D), (N, D)
    return (d * r).sum(-1).clamp(min=0).tolist()


def type_token_ratio(text: str) -> float:
    tokens = words(text)
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def distinct_bigrams(texts: Sequence[str]) -> float:
    """Distinct word bigrams over all ``texts`` / all bigrams: low when replies repeat."""
    grams = [tuple(t[i:i + 2]) for t in map(words, texts) for i in range(len(t) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def style_matching(post: str, reply: str) -> float:
    """Language style matching: per category, 1 - |p - q| / (p + q + 0.0001) with p, q the
    category's share of the post's and the reply's words; the mean over categories."""
    a, b = words(post), words(reply)
    if not a or not b:
        return 0.0
    scores = []
    for vocab in _CATEGORIES.values():
        p = 100 * sum(w in vocab for w in a) / len(a)
        q = 100 * sum(w in vocab for w in b) / len(b)
        scores.append(1 - abs(p - q) / (p + q + 0.0001))
    return sum(scores) / len(scores)


def analyse(posts: Sequence[str], drafts: Sequence[str], replies: Sequence[str],
            embed: Callable[[Sequence[str]], torch.Tensor]) -> dict[str, float]:
    """The means over replies: draft_similarity, key_content (intent preservation: the draft
    each reply answers or revises), ttr, distinct_2, style_matching (to the post)."""
    n = max(1, len(replies))
    return {"draft_similarity": sum(draft_similarity(drafts, replies, embed)) / n,
            "key_content": sum(map(key_content_kept, drafts, replies)) / n,
            "ttr": sum(map(type_token_ratio, replies)) / n,
            "distinct_2": distinct_bigrams(replies),
            "style_matching": sum(map(style_matching, posts, replies)) / n}
