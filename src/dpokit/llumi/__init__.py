"""LLUMI (Kim et al. 2026): community feedback to an aligned support-writing assistant.
``rubric`` (readability, judge hooks, the offline lexicon-and-embedding judge, the safety
policy check)."""

from .rubric import (
    CRITERIA,
    LexiconJudge,
    RubricReport,
    SafetyPolicy,
    check_safety,
    flesch_kincaid_grade,
    flesch_reading_ease,
    score_replies,
)

__all__ = ["CRITERIA", "LexiconJudge", "RubricReport", "SafetyPolicy", "check_safety",
           "flesch_kincaid_grade", "flesch_reading_ease", "score_replies"]
