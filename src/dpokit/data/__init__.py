"""Data: read rows (``io``), count what happened to them (``report``), and for text, tokenize
pairs and SFT sequences and collate them (``text``)."""

from .io import DataError, Record, load_records
from .report import DataReport, ExampleSet, build_examples
from .text.collate import (
    PairCollator,
    PreferenceBatch,
    SequenceCollator,
    TextBatch,
    collate_pairs,
    collate_sequences,
)
from .text.pairs import (
    PreferencePairs,
    TokenizedPair,
    TokenizeSettings,
    build_pairs,
    build_unpaired,
    tokenize_record,
)
from .text.sft import TokenizedSequence, build_sequences

__all__ = [
    "DataError", "DataReport", "ExampleSet", "PairCollator", "PreferenceBatch", "PreferencePairs",
    "Record", "SequenceCollator", "TextBatch", "TokenizeSettings", "TokenizedPair",
    "TokenizedSequence", "build_examples", "build_pairs", "build_sequences", "build_unpaired",
    "collate_pairs", "collate_sequences", "load_records", "tokenize_record",
]
