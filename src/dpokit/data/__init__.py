"""Data: load rows, validate and tokenize them, collate them into batches."""

from .collate import PreferenceBatch, collate_pairs
from .loading import DataError, Record, load_records
from .preference import (
    DataReport,
    PreferencePairs,
    TokenizedPair,
    TokenizeSettings,
    build_pairs,
    build_unpaired,
    tokenize_record,
)

__all__ = [
    "DataError", "DataReport", "PreferenceBatch", "PreferencePairs", "Record", "TokenizeSettings",
    "TokenizedPair", "build_pairs", "build_unpaired", "collate_pairs", "load_records", "tokenize_record",
]
