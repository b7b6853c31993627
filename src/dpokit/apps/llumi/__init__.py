"""LLUMI (Kim et al. 2026): community feedback to an aligned support-writing assistant.
``rubric`` (readability, judge hooks, the offline lexicon-and-embedding judge, the safety
policy check), ``stages`` (the generation and improvement models' prompts and SFT / DPO1
rows from vote pairs), ``linguistics`` (intent preservation, lexical diversity, style
matching)."""

from .linguistics import analyse
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
from .stages import generation_prompt, generation_rows, improvement_prompt, improvement_rows

__all__ = ["CRITERIA", "analyse", "LexiconJudge", "RubricReport", "SafetyPolicy", "check_safety",
           "flesch_kincaid_grade", "flesch_reading_ease", "generation_prompt", "generation_rows",
           "improvement_prompt", "improvement_rows", "score_replies"]
