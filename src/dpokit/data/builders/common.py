"""What every builder returns (rows and a report of what was kept and dropped) and how the
rows are written.

    >>> report = BuildReport(); report.drop("tied scores", 2); report.kept = 1
    >>> report.summary()
    '1 pairs written; dropped: 2 tied scores'
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.packages import need
from ...core.paths import replace_atomically
from ...core.signals import cooperative, stop_point
from ...core.types import Domain
from ..io import Record


@dataclass
class BuildReport:
    """kept: pairs written; dropped: what was not used, by reason (comments, candidate pairs,
    samples: ``unit`` says what each reason counts, e.g. "comment: reply to a comment")."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] += n

    def summary(self) -> str:
        text = f"{self.kept} pairs written"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} {why}" for why, n in
                                              sorted(self.dropped.items(), key=lambda x: -x[1]))
        return "; ".join([text, *self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": dict(self.dropped), "notes": self.notes}


@dataclass
class BuiltPairs:
    """rows: dicts with ``prompt``, ``chosen``, ``rejected`` and the builder's provenance
    columns (``rule`` always); report: what was kept and dropped."""

    rows: list[dict[str, Any]]
    report: BuildReport


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """JSON Lines (``.jsonl``) or Parquet (``.parquet``, needs pyarrow), by the extension."""
    path = Path(path)
    if path.suffix == ".parquet":
        pa = need("pyarrow", "data", "writing Parquet")
        import pyarrow.parquet as pq

        replace_atomically(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))
    elif path.suffix == ".jsonl":
        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as f, cooperative():
                for i, row in enumerate(rows):
                    if i % 1000 == 0:  # SIGINT / SIGTERM: stop, the old output untouched
                        stop_point("writing rows", f"{path} is untouched (nothing was renamed "
                                                   f"over it)")
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

        replace_atomically(path, write)
    else:
        raise ValueError(f"{path}: write .jsonl or .parquet")
    return path


def option(default: Any, help: str, domain: Domain | None = None) -> Any:
    """A settings field with its one-line meaning and, for a number, its domain (``dpokit
    pairs ... --help`` shows both; the command line refuses a value outside the domain)."""
    return field(default=default, metadata={"help": help, "domain": domain})


_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9}  # what forum exports write: 1.2k, 3M


def as_number(value: Any) -> float | None:
    """A score as a float (``1.2k`` and ``3M``, as forum exports write them, too); None for a
    missing or empty value; NaN for one that is there but not a number (a boolean, ``n/a``),
    so that a builder can say which (:func:`score_problem`).

    >>> as_number("1.2k"), as_number(" 3M "), as_number(""), as_number("lots")
    (1200.0, 3000000.0, None, nan)
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, str):
        text = value.strip().replace(",", "")
        scale = _SUFFIXES.get(text[-1:].lower(), 1.0)
        text = text[:-1] if scale != 1.0 else text
        try:
            return float(text) * scale
        except ValueError:
            return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return None if math.isnan(number) else number


def score_problem(score: float | None, what: str = "score") -> str | None:
    """Why a parsed score is unusable (``missing score``, ``score is not a number``), or None.
    """
    if score is None:
        return f"missing {what}"
    if math.isnan(score):
        return f"{what} is not a number"
    return None


def as_record(row: Record | Mapping[str, Any], i: int) -> Record:
    """A row as a located :class:`Record` (in-memory rows are ``rows``, row ``i + 1``)."""
    return row if isinstance(row, Record) else Record("rows", i + 1, dict(row))
