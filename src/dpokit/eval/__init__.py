"""Evaluation: sample generations and before/after tables."""

from .generate import comparison_table, generate

__all__ = ["comparison_table", "generate"]
