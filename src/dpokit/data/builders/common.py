"""What every builder returns (rows and a report of what was kept and dropped) and how the
rows are written.

    >>> report = BuildReport(); report.drop("tied scores", 2); report.kept = 1
    >>> report.summary()
    '1 pairs written; dropped: 2 tied scores'
"""

from __future__ import annotations

import json
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


def as_record(row: Record | Mapping[str, Any], i: int) -> Record:
    """A row as a located :class:`Record` (in-memory rows are ``rows``, row ``i + 1``)."""
    return row if isinstance(row, Record) else Record("rows", i + 1, dict(row))
