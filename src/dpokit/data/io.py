"""Read raw records from JSONL / JSON / Parquet / CSV files or a ``datasets`` dataset.

Every record keeps where it came from (file and 1-based row), so later errors can name them.
Data larger than memory is read lazily from JSON Lines shards (``stream_jsonl``).

    >>> records = load_records("data/sentiment_pairs.eval.jsonl")   # doctest: +SKIP
    >>> records[0].source, records[0].row                          # doctest: +SKIP
    ('data/sentiment_pairs.eval.jsonl', 1)
"""

from __future__ import annotations

import csv
import difflib
import glob
import io
import json
import math
from collections.abc import Iterator, Sequence
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


_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9}  # what forum exports write: 1.2k, 3M


def as_number(value: Any) -> float | None:
    """A number read from a data file, as a float: the one parser of every reader (vote and
    post scores, scored responses, the threads table, a pair's numeric columns). ``1.2k`` and
    ``3M``, as forum exports write them, and ``"1,024"`` are numbers; None for a missing or empty
    value; NaN for one that is there but not a finite number (a boolean, ``n/a``, ``inf``), so
    that a reader can say which (:func:`score_problem`).

    >>> as_number("1.2k"), as_number(" 3M "), as_number(""), as_number("lots"), as_number(2)
    (1200.0, 3000000.0, None, nan, 2.0)
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
            number = float(text) * scale
        except ValueError:
            return math.nan
        return number if math.isfinite(number) else math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    if math.isnan(number):
        return None  # a NaN cell is how pandas and parquet write a missing value
    return number if math.isfinite(number) else math.nan


def score_problem(score: float | None, what: str = "score") -> str | None:
    """Why a parsed score is unusable (``missing score``, ``score is not a number``), or None.
    """
    if score is None:
        return f"missing {what}"
    if math.isnan(score):
        return f"{what} is not a number"
    return None


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of a UTF-8 file, a leading BOM dropped; bytes that are not
    UTF-8 are an error naming their line."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # what spreadsheet tools write
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(str(path), line, None, f"not UTF-8: byte {raw[err.start]:#04x} at "
                        f"offset {err.start}; save the file as UTF-8") from None
    return list(enumerate(text.splitlines(), start=1))


def _parse_json_lines(path: Path, lines: list[tuple[int, str]],
                      bad_rows: list[DataError] | None) -> list[Record]:
    records = []
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise DataError(str(path), line_no, None, "expected a JSON object per line")
        except (json.JSONDecodeError, DataError) as err:
            error = err if isinstance(err, DataError) else DataError(
                str(path), line_no, None, f"invalid JSON: {err.msg}")
            if bad_rows is None:
                raise error from None
            bad_rows.append(error)
            continue
        records.append(Record(str(path), line_no, value))
    return records


def _read_jsonl(path: Path, bad_rows: list[DataError] | None = None) -> list[Record]:
    return _parse_json_lines(path, _lines(path), bad_rows)


def _read_json(path: Path, bad_rows: list[DataError] | None = None) -> list[Record]:
    lines = _lines(path)
    text = "\n".join(line for _, line in lines)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and text.lstrip().startswith("{"):
            return _parse_json_lines(path, lines, bad_rows)  # JSON Lines named .json
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


def _read_csv(path: Path, bad_rows: list[DataError] | None = None) -> list[Record]:
    text = "\n".join(line for _, line in _lines(path))
    reader = csv.DictReader(io.StringIO(text))
    return [Record(str(path), i, dict(row)) for i, row in enumerate(reader, start=1)]


def _read_parquet(path: Path, bad_rows: list[DataError] | None = None) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(str(path), None, None, "reading Parquet needs pyarrow: pip install "
                        "'dpokit[data]'") from err
    rows = pq.read_table(path).to_pylist()
    return [Record(str(path), i, row) for i, row in enumerate(rows, start=1)]


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a hub name (``org/name``)."""
    return (Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
            or "\\" in name)


def _read_hf_dataset(name: str, split: str) -> list[Record]:
    path = Path(name)
    if path.is_dir() and not any((path / f).exists()
                                 for f in ("dataset_info.json", "dataset_dict.json")):
        raise DataError(name, None, None, "a folder, but not a dataset saved with "
                        "save_to_disk (no dataset_info.json or dataset_dict.json); name a "
                        ".jsonl / .json / .csv / .parquet file instead")
    if not path.exists() and _looks_like_a_path(name):
        raise DataError(name, None, None, "no such file or folder")
    try:
        import datasets
    except ImportError as err:
        raise DataError(name, None, None, "reading a datasets dataset needs datasets: pip "
                        "install 'dpokit[data]'") from err
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # the datasets library raises many kinds; name the source either way
        offline = "" if path.exists() else (
            " It is not a local path; loading it from the hub failed (offline?).")
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(name, None, None,
                        f"could not load dataset.{offline} Cause: {cause}") from err
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


def load_records(source: str, split: str = "train",
                 bad_rows: list[DataError] | None = None) -> list[Record]:
    """Read every row of ``source``: a file by its extension, else a ``datasets`` dataset.

    bad_rows: when a list is given, JSON rows that do not parse are appended to it (to be
    counted as skipped) instead of raising."""
    path = Path(source)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        return _read_hf_dataset(source, split)
    _check_file(source, path)
    try:
        records = reader(path, bad_rows)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(source, None, None, f"unreadable file: {err}") from err
    except DataError:
        raise
    except Exception as err:  # e.g. a corrupt Parquet footer
        raise DataError(
            source, None, None, f"unreadable file: {type(err).__name__}: {err}"
        ) from err
    if not records and not bad_rows:
        raise DataError(source, None, None, "empty file: no rows")
    return records


def _check_file(source: str, path: Path) -> None:
    """A data file that is there, a file, and not empty; else one line naming it."""
    if path.is_dir():
        raise DataError(source, None, None, "a folder, not a file")
    if not path.is_file():
        raise DataError(source, None, None, "file not found")
    if path.stat().st_size == 0:
        raise DataError(source, None, None, "empty file: no rows")


def peek_records(source: str, split: str = "train") -> Record | None:
    """The first readable row of ``source``, read as cheaply as its format allows (JSON Lines
    and CSV: up to that row; Parquet: its first batch; JSON, a saved dataset: the whole
    source), so that a run can name a missing or unreadable file before anything expensive.
    None for a hub dataset name (only its loader can tell, and it does before any weights
    load).

    >>> peek_records("missing.jsonl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpokit.data.io.DataError: missing.jsonl: file not found
    """
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".parquet"):
        if suffix not in _READERS and not path.exists() and not _looks_like_a_path(source):
            return None
        rows = load_records(source, split)
        if not rows:
            raise DataError(source, None, None, "no rows")
        return rows[0]
    _check_file(source, path)
    if suffix == ".parquet":
        return _first_parquet_row(path)
    if suffix == ".csv":
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                row = next(csv.DictReader(handle), None)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(source, None, None, f"unreadable file: {err}") from err
        if row is None:
            raise DataError(source, None, None, "empty file: no rows")
        return Record(source, 1, dict(row))
    first_error = None
    for item in stream_jsonl([path]):
        if isinstance(item, Record):
            return item
        first_error = first_error or item
    raise first_error or DataError(source, None, None, "empty file: no rows")


def _first_parquet_row(path: Path) -> Record:
    try:
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=1), None)
    except ImportError as err:
        raise DataError(str(path), None, None, "reading Parquet needs pyarrow: pip install "
                        "'dpokit[data]'") from err
    except Exception as err:  # a corrupt footer, another file renamed
        raise DataError(str(path), None, None,
                        f"unreadable file: {type(err).__name__}: {err}") from err
    if batch is None or batch.num_rows == 0:
        raise DataError(str(path), None, None, "empty file: no rows")
    return Record(str(path), 1, batch.to_pylist()[0])


def check_jsonl_spec(spec: str) -> None:
    """A streaming source's ``train_data`` names JSON Lines: a ``.jsonl`` file, a folder or a
    glob; another format is refused before anything loads.

    >>> check_jsonl_spec("pairs.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpokit.data.io.DataError: pairs.csv: streaming reads JSON Lines ..., not .csv: ...
    """
    suffix = Path(spec).suffix
    if suffix and suffix != ".jsonl" and not any(c in spec for c in "*?["):
        raise DataError(spec, None, None, f"streaming reads JSON Lines (a .jsonl file, a folder "
                        f"of them, or a glob), not {suffix}: convert it, or set "
                        f"streaming=false")


def jsonl_shards(spec: str) -> list[Path]:
    """The JSON Lines files a streaming source reads, in order: one file, a folder's
    ``*.jsonl`` files, or a glob (``data/shard-*.jsonl``)."""
    check_jsonl_spec(spec)
    path = Path(spec)
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else sorted(
        Path(p) for p in glob.glob(spec))
    if not files:
        raise DataError(spec, None, None, "no JSON Lines shards (a .jsonl file, a folder of "
                        "them, or a glob)")
    return files


def stream_jsonl(files: Sequence[Path]) -> Iterator[Record | DataError]:
    """Each non-empty line of the shards in order, read lazily (one line in memory): a
    :class:`Record`, or the :class:`DataError` of a line that is not a JSON object."""
    for path in files:
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield DataError(str(path), line_no, None, "not UTF-8")
                    continue
                except json.JSONDecodeError as err:
                    yield DataError(str(path), line_no, None, f"invalid JSON: {err.msg}")
                    continue
                if not isinstance(value, dict):
                    yield DataError(str(path), line_no, None, "expected a JSON object per line")
                    continue
                yield Record(str(path), line_no, value)


def count_jsonl_rows(files: Sequence[Path]) -> int:
    """Non-empty lines of the shards, counted in one streaming pass."""
    count = 0
    for path in files:
        with path.open("rb") as handle:
            count += sum(1 for raw in handle if raw.strip())
    return count


def check_columns(record: Record, known: tuple[str, ...]) -> None:
    """A column that is not used and looks like a misspelling of a known one is an error
    naming both (``promt`` for ``prompt``), instead of a silently ignored column."""
    for column in record.values:
        if column in known:
            continue
        close = difflib.get_close_matches(column, known, n=1, cutoff=0.75)
        if close and close[0] not in record.values:
            raise DataError(record.source, record.row, column, f"unknown column {column!r}; "
                            f"did you mean {close[0]!r}? (it is not used as it is)")
