"""Data of every modality: read rows (``io``: every row with its file and 1-based row number),
count what happened to them (``report``), split by prompt (``split``), build pairs
(``builders``). The text modality's tokenizing and collating is :mod:`dpokit.data.text`."""

from .io import DataError, Record, load_records
from .report import DataReport, ExampleSet, build_examples

__all__ = ["DataError", "DataReport", "ExampleSet", "Record", "build_examples", "load_records"]
