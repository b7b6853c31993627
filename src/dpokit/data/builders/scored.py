"""Pairs from several scored answers per prompt (UltraFeedback-style binarization).

A group is one prompt and its scored responses. Pairings (:data:`PAIRINGS`):

- ``best_worst``: the highest against the lowest score;
- ``best_random``: the highest against one of the lower-scored others, drawn with a seed per
  prompt (the binarization of UltraFeedback used by Zephyr);
- ``all_pairs``: every two responses whose scores differ by at least ``margin``.

The highest score's first response wins a tie for best; a pair whose scores differ by less
than ``margin`` (ties always: ``margin`` 0 still needs a difference) is dropped and counted, as
are responses without a numeric score and pairs of identical texts.

    >>> groups = [ScoredGroup("p0", "Q?", [("a", 1.0), ("b", 5.0), ("c", 3.0)])]
    >>> [(r["chosen"], r["rejected"]) for r in pair_scored(groups).rows]
    [('b', 'a')]
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ...core.types import NON_NEGATIVE
from ..io import DataError, Record, as_number, score_problem
from .common import BuildReport, BuiltPairs, as_record, option

Pairing = Literal["best_worst", "best_random", "all_pairs"]
PAIRINGS: tuple[str, ...] = ("best_worst", "best_random", "all_pairs")
TEXT_KEYS = ("response", "completion", "text", "content")


@dataclass(frozen=True)
class ScoredSettings:
    pairing: Pairing = option("best_worst",
                              "best_worst, best_random (a seeded draw among the lower ones) or "
                              "all_pairs")
    margin: float = option(0.0, "the smallest score difference that makes a pair (ties never "
                           "do)", NON_NEGATIVE)
    seed: int = option(0, "seeds best_random's draw (per prompt)", NON_NEGATIVE)


@dataclass
class ScoredGroup:
    """One prompt and its responses as ``(text, score)``; score None when missing."""

    prompt_id: str
    prompt: Any
    responses: list[tuple[str, float | None]]


def _text(value: Any, rec: Record, name: str) -> str:
    if isinstance(value, Mapping):
        key = next((k for k in TEXT_KEYS if k in value), None)
        if key is None:
            raise DataError(rec.source, rec.row, name, f"a response needs one of {TEXT_KEYS}")
        value = value[key]
    if not isinstance(value, str):
        raise DataError(rec.source, rec.row, name, f"not a string: got {type(value).__name__}")
    return value


def _prompt_id(prompt: Any) -> str:
    return hashlib.sha256(repr(prompt).encode()).hexdigest()[:12]


def scored_groups(rows: Iterable[Record | Mapping[str, Any]]) -> list[ScoredGroup]:
    """Groups from wide rows (``prompt``, ``responses`` as strings or ``{response, score}``
    objects, optional ``scores``) or long rows (``prompt``, ``response`` / ``completion``,
    ``score``; grouped by ``prompt_id`` when present, else by the prompt), in first-seen order.
    """
    groups: dict[str, ScoredGroup] = {}
    for i, row in enumerate(rows):
        rec = as_record(row, i)
        v = rec.values
        if "prompt" not in v:
            raise DataError(rec.source, rec.row, "prompt", "missing column: 'prompt'")
        pid = str(v.get("prompt_id") or _prompt_id(v["prompt"]))
        group = groups.setdefault(pid, ScoredGroup(pid, v["prompt"], []))
        if "responses" in v:
            responses = v["responses"]
            if not isinstance(responses, list):
                raise DataError(rec.source, rec.row, "responses", "expected a list")
            scores = v.get("scores")
            if scores is not None and (not isinstance(scores, list)
                                       or len(scores) != len(responses)):
                raise DataError(rec.source, rec.row, "scores",
                                f"expected a list of {len(responses)} scores")
            for j, item in enumerate(responses):
                score = scores[j] if scores is not None else (
                    item.get("score") if isinstance(item, Mapping) else None)
                group.responses.append((_text(item, rec, f"responses[{j}]"), as_number(score)))
            continue
        key = next((k for k in TEXT_KEYS if k in v), None)
        if key is None or "score" not in v:
            raise DataError(rec.source, rec.row, None, "expected 'responses' (wide) or "
                            "'response' and 'score' (long)")
        group.responses.append((_text(v[key], rec, key), as_number(v["score"])))
    return list(groups.values())


def _pair_row(group: ScoredGroup, rule: str, best: int, worst: int) -> dict[str, Any]:
    (chosen, s_c), (rejected, s_r) = group.responses[best], group.responses[worst]
    return {"prompt": group.prompt, "chosen": chosen, "rejected": rejected, "rule": rule,
            "prompt_id": group.prompt_id, "chosen_index": best, "rejected_index": worst,
            "score_chosen": s_c, "score_rejected": s_r}


def _usable(a: tuple[str, float], b: tuple[str, float], margin: float,
            report: BuildReport) -> bool:
    diff = a[1] - b[1]
    if diff == 0:
        report.drop("pair: tied scores")
    elif diff < margin:
        report.drop(f"pair: score difference below margin {margin:g}")
    elif a[0].strip() == b[0].strip():
        report.drop("pair: identical texts")
    else:
        return True
    return False


def pair_scored(groups: Iterable[ScoredGroup],
                settings: ScoredSettings = ScoredSettings()) -> BuiltPairs:
    """Preference pairs from scored groups under ``settings.pairing``."""
    report, out = BuildReport(), []
    rule = f"scored:{settings.pairing}"
    for group in groups:
        for _, score in group.responses:
            problem = score_problem(score)
            if problem:
                report.drop(f"response: {problem}")
        scored = [(i, r) for i, r in enumerate(group.responses) if score_problem(r[1]) is None]
        if len(scored) < 2:
            report.drop("prompt: fewer than 2 scored responses")
            continue
        ranked = sorted(scored, key=lambda x: (-x[1][1], x[0]))  # best first, index breaks ties
        best_i, best = ranked[0]
        if settings.pairing == "best_worst":
            worst_i, worst = ranked[-1]
            if _usable(best, worst, settings.margin, report):
                out.append(_pair_row(group, rule, best_i, worst_i))
        elif settings.pairing == "best_random":
            lower = [(i, r) for i, r in ranked[1:] if best[1] - r[1] >= max(settings.margin, 0)
                     and r[1] < best[1]]
            if not lower:
                _usable(best, ranked[-1][1], settings.margin, report)  # counts why
                continue
            rng = random.Random(f"{settings.seed}:{group.prompt_id}")
            worst_i, worst = rng.choice(lower)
            if _usable(best, worst, settings.margin, report):
                out.append(_pair_row(group, rule, best_i, worst_i))
        elif settings.pairing == "all_pairs":
            for k, (i, a) in enumerate(ranked):
                for j, b in ranked[k + 1:]:
                    if _usable(a, b, settings.margin, report):
                        out.append(_pair_row(group, rule, i, j))
        else:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {settings.pairing!r}")
    report.kept = len(out)
    return BuiltPairs(out, report)
