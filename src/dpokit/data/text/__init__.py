"""The text modality's data: chat rendering with exact prompt / completion boundaries
(``format``), preference and unpaired rows (``pairs``), SFT rows (``sft``), the three batch
layouts (``collate``), ``dpokit data inspect`` (``inspect``)."""

from .collate import (
    PairCollator,
    PreferenceBatch,
    SequenceCollator,
    TextBatch,
    collate_pairs,
    collate_sequences,
)
from .pairs import (
    PreferencePairs,
    TokenizedPair,
    TokenizeSettings,
    build_pairs,
    build_unpaired,
    tokenize_record,
)
from .sft import TokenizedSequence, build_sequences

__all__ = [
    "PairCollator", "PreferenceBatch", "PreferencePairs", "SequenceCollator", "TextBatch",
    "TokenizeSettings", "TokenizedPair", "TokenizedSequence", "build_pairs", "build_sequences",
    "build_unpaired", "collate_pairs", "collate_sequences", "tokenize_record",
]
