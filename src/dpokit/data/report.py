"""What happened to the rows (kept, skipped by reason, truncated), and the tokenized dataset
that carries that report. Modality-free: the tokenizer of each example kind is passed in.

    >>> report = DataReport(); report.kept = 3
    >>> report.summary()
    '3 pairs kept; 0 skipped; 0 completions truncated'
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .io import DataError, Record

OnBadRows = Literal["error", "skip"]


@dataclass
class DataReport:
    """What happened to the rows: kept, skipped (by reason), completions truncated."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_skipped: list[str] = field(default_factory=list)  # up to 5 located examples
    truncated_completions: int = 0
    unit: str = "pairs"  # what is counted: "pairs", "unpaired rows" (KTO), "sequences" (SFT)
    notes: list[str] = field(default_factory=list)  # how the file was read

    def skip(self, err: DataError) -> None:
        self.skipped[err.reason.split(":")[0]] += 1
        if len(self.first_skipped) < 5:
            self.first_skipped.append(str(err))

    def summary(self) -> str:
        total = sum(self.skipped.values())
        text = (f"{self.kept} {self.unit} kept; {total} skipped; "
                f"{self.truncated_completions} completions truncated")
        if total:
            text += " (" + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) + ")"
        return "; ".join([text, *self.notes])


@dataclass
class ExampleSet:
    """A tokenized dataset: its examples (each with ``index`` and ``token_lists()``), the
    report of how they were made, and a fingerprint of every token id."""

    items: list[Any]
    report: DataReport

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]

    @property
    def pairs(self) -> list[Any]:  # the historical name of ``items`` for preference data
        return self.items

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps(item.token_lists()).encode())
        return digest.hexdigest()


def build_examples(records: Sequence[Record], make: Callable[[Record, DataReport, int], Any],
                   on_bad_rows: OnBadRows = "error", unit: str = "pairs",
                   skipped: list[DataError] | None = None) -> ExampleSet:
    """``make(record, report, index)`` each record; a bad row raises :class:`DataError`, or
    with ``on_bad_rows="skip"`` is skipped and counted by reason. ``skipped``: rows the reader
    already skipped (invalid JSON), counted the same way."""
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    report = DataReport(unit=unit)
    for err in skipped or []:
        report.skip(err)
    items: list[Any] = []
    for record in records:
        try:
            items.append(make(record, report, len(items)))
        except DataError as err:
            if on_bad_rows == "error":
                raise
            report.skip(err)
    report.kept = len(items)
    if not items:
        source = records[0].source if records else "dataset"
        raise DataError(source, None, None, f"no usable rows: {report.summary()}")
    return ExampleSet(items, report)
