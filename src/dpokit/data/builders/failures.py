"""Pairs from the model's own failures: a degenerate output as rejected, the reference answer
as chosen.

Detectors (:data:`DETECTORS`, each switchable, thresholds in :class:`FailureSettings`):

- ``empty``: fewer than ``min_chars`` letters or digits;
- ``repetition``: the share of repeated word ``ngram``-grams is at least ``max_repeat``
  (a loop such as "the end the end the end ...");
- ``truncation``: the generator stopped at its token limit (``finished`` False), or, when that
  is unknown, the text does not end like a sentence (``.!?`` or a closing quote/bracket);
- ``refusal``: a refusal phrase ("I can't", "I'm sorry, but", "As an AI", ...) in the first
  ``refusal_window`` characters;
- ``off_language``: under ``min_latin`` of the letters are Latin, or (``min_words`` words or
  more) under ``min_stopwords`` of the words are common English function words.

    >>> detect_failures("the end the end the end the end the end the end")
    ['repetition', 'truncation']
    >>> detect_failures("I'm sorry, but I can't help with that.")
    ['refusal']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...core.types import AT_LEAST_ONE, NON_NEGATIVE, UNIT_INTERVAL, Domain
from ..io import DataError, Record
from .common import BuildReport, BuiltPairs, as_record, option

DETECTORS: tuple[str, ...] = ("empty", "repetition", "truncation", "refusal", "off_language")
REFUSALS = (r"\bI(?:'m| am) sorry\b", r"\bI can(?:not|'t|’t)\b",
            r"\bI(?:'m| am) (?:not able|unable) to\b", r"\bI won(?:'t|’t)\b", r"\bAs an AI\b",
            r"\bI do not feel comfortable\b", r"\bI must decline\b")
STOPWORDS = frozenset("a an and are as at be but by for from has have he her his i in is it its "
                      "me my not of on or our she so that the their them they this to was we were "
                      "what when which who will with you your".split())
_SENTENCE_END = re.compile(r"[.!?…)\]\"'”’*`]\s*$")


@dataclass(frozen=True)
class FailureSettings:
    detectors: tuple[str, ...] = option(DETECTORS, "which detectors run (comma-separated)")
    min_chars: int = option(1, "empty: fewer letters or digits than this", NON_NEGATIVE)
    ngram: int = option(3, "repetition: word n-gram size", AT_LEAST_ONE)
    max_repeat: float = option(0.5, "repetition: share of repeated n-grams that flags a loop",
                               Domain(0.0, 1.0, high_inclusive=True))
    refusal_patterns: tuple[str, ...] = REFUSALS
    refusal_window: int = option(200, "refusal: characters searched from the start",
                                 AT_LEAST_ONE)
    min_latin: float = option(0.8, "off_language: share of Latin letters below which a text is "
                              "flagged", UNIT_INTERVAL)
    min_stopwords: float = option(0.05, "off_language: share of English function words below "
                                  "which it is flagged", UNIT_INTERVAL)
    min_words: int = option(8, "off_language: the function-word test needs at least this many "
                            "words", AT_LEAST_ONE)

    def __post_init__(self):
        unknown = set(self.detectors) - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors {sorted(unknown)}; known: {list(DETECTORS)}")


# what makes an answer unusable whatever was asked (refusal and language are task-dependent)
DEGENERATE = FailureSettings(detectors=("empty", "repetition", "truncation"))


def repeated_share(words: list[str], n: int) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def detect_failures(text: str, finished: bool | None = None,
                    settings: FailureSettings = FailureSettings()) -> list[str]:
    """The detectors that fire on ``text`` (in :data:`DETECTORS` order)."""
    on, fired = set(settings.detectors), []
    stripped = text.strip()
    if "empty" in on and sum(c.isalnum() for c in stripped) < settings.min_chars:
        return ["empty"]  # nothing else is meaningful on an empty answer
    words = stripped.lower().split()
    if "repetition" in on and repeated_share(words, settings.ngram) >= settings.max_repeat:
        fired.append("repetition")
    if "truncation" in on and (finished is False
                               or (finished is None and not _SENTENCE_END.search(stripped))):
        fired.append("truncation")
    head = stripped[:settings.refusal_window]
    if "refusal" in on and any(re.search(p, head, re.IGNORECASE)
                               for p in settings.refusal_patterns):
        fired.append("refusal")
    if "off_language" in on:
        letters = [c for c in stripped if c.isalpha()]
        latin = sum(c.isascii() or "\u00c0" <= c <= "\u024f" for c in letters)
        cleaned = [w.strip(".,;:!?\"'()") for w in words]
        function_words = sum(w in STOPWORDS for w in cleaned)
        if (letters and latin / len(letters) < settings.min_latin) or (
                len(words) >= settings.min_words
                and function_words / len(words) < settings.min_stopwords):
            fired.append("off_language")
    return fired


def failure_pairs(rows: Iterable[Record | Mapping[str, Any]],
                  settings: FailureSettings = FailureSettings()) -> BuiltPairs:
    """Rows with ``prompt``, ``reference`` (the good answer) and the model's ``outputs`` (a list;
    or one ``completion``), optional ``finished`` (a bool per output): one pair per distinct
    failing output, ``failure`` naming every detector that fired."""
    report, out = BuildReport(), []
    for i, row in enumerate(rows):
        rec = as_record(row, i)
        v = rec.values
        for name in ("prompt", "reference"):
            if name not in v:
                raise DataError(rec.source, rec.row, name, f"missing column: {name!r}")
        outputs = v.get("outputs", [v["completion"]] if "completion" in v else None)
        if not isinstance(outputs, list):
            raise DataError(rec.source, rec.row, "outputs", "expected a list of outputs (or a "
                            "'completion')")
        finished = v.get("finished")
        finished = finished if isinstance(finished, list) else [finished] * len(outputs)
        seen: set[str] = set()
        for j, output in enumerate(outputs):
            if not isinstance(output, str):
                raise DataError(rec.source, rec.row, f"outputs[{j}]", "not a string")
            if output.strip() in seen:
                report.drop("output: duplicate of an earlier output")
                continue
            seen.add(output.strip())
            fired = detect_failures(output, finished[j], settings)
            if not fired:
                report.drop("output: no failure detected")
                continue
            if output.strip() == str(v["reference"]).strip():
                report.drop("output: equals the reference")
                continue
            out.append({"prompt": v["prompt"], "chosen": v["reference"], "rejected": output,
                        "rule": f"failures:{fired[0]}", "failure": ",".join(fired),
                        "row": rec.row, "output_index": j})
    report.kept = len(out)
    return BuiltPairs(out, report)
