"""Read raw records from JSONL / JSON / Parquet / CSV files or a ``datasets`` dataset.

Every record keeps where it came from (file and 1-based row), so later errors can name them.

    >>> records = load_records("data/sentiment_pairs.eval.jsonl")   # doctest: +SKIP
    >>> records[0].source, records[0].row                          # doctest: +SKIP
    ('data/sentiment_pairs.eval.jsonl', 1)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input, located: ``source`` (file or dataset), ``row`` (1-based) and ``field``."""

    def __init__(self, source: str, row: int | None, field: str | None, reason: str):
        self.source, self.row, self.field, self.reason = source, row, field, reason
        where = source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Record:
    """One raw row as read from its source."""

    source: str
    row: int  # 1-based: the line of a JSONL file, the data row of a CSV, the index + 1 otherwise
    values: dict[str, Any]


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(str(path), line_no, None, f"invalid JSON: {err.msg}") from err
            if not isinstance(value, dict):
                raise DataError(str(path), line_no, None, "expected a JSON object per line")
            records.append(Record(str(path), line_no, value))
    return records


def _read_json(path: Path) -> list[Record]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(str(path), err.lineno, None, f"invalid JSON: {err.msg}") from err
    if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()) and value:
        columns = list(value)  # column-oriented {"prompt": [...], "chosen": [...]}
        lengths = {len(value[c]) for c in columns}
        if len(lengths) != 1:
            raise DataError(str(path), None, None, "columns have different lengths")
        value = [
            dict(zip(columns, items, strict=False)) for items in zip(*value.values(), strict=False)
        ]
    if not isinstance(value, list):
        raise DataError(str(path), None, None, "expected a list of objects or a dict of columns")
    records = []
    for i, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataError(str(path), i, None, "expected a JSON object")
        records.append(Record(str(path), i, item))
    return records


def _read_csv(path: Path) -> list[Record]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return [Record(str(path), i, dict(row)) for i, row in enumerate(reader, start=1)]


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(
            str(path), None, None, "reading Parquet needs `pip install pyarrow`"
        ) from err
    rows = pq.read_table(path).to_pylist()
    return [Record(str(path), i, row) for i, row in enumerate(rows, start=1)]


def _read_hf_dataset(name: str, split: str) -> list[Record]:
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            name, None, None, "reading a datasets dataset needs `pip install datasets`"
        ) from err
    path = Path(name)
    try:
        if path.is_dir() and (
            (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
        ):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # the datasets library raises many kinds; name the source either way
        offline = (
            ""
            if path.exists()
            else (" It is not a local path; loading it from the hub failed (offline?).")
        )
        raise DataError(name, None, None, f"could not load dataset.{offline} Cause: {err}") from err
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(name, None, None, f"no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    return [Record(name, i, dict(row)) for i, row in enumerate(ds, start=1)]


_READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def load_records(source: str, split: str = "train") -> list[Record]:
    """Read every row of ``source``: a file by its extension, else a ``datasets`` dataset."""
    path = Path(source)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        return _read_hf_dataset(source, split)
    if not path.is_file():
        raise DataError(source, None, None, "file not found")
    try:
        return reader(path)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(source, None, None, f"unreadable file: {err}") from err
    except DataError:
        raise
    except Exception as err:  # e.g. a corrupt Parquet footer
        raise DataError(
            source, None, None, f"unreadable file: {type(err).__name__}: {err}"
        ) from err
