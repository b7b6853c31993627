"""SecAlign (Chen et al. 2024/2025): DPO that teaches a model to follow only the instruction in
its instruction segment and ignore instructions injected into its data.

``frontend`` (StruQ's reserved delimiters and data filter), ``tasks`` (program-graded tasks
over real text), ``builder`` (SFT, StruQ and SecAlign preference rows), ``attacks`` (the
manual prompt-injection suite), ``gcg`` (universal batched GCG), ``evaluate`` (ASR and
utility). The experiment: ``experiments/secalign.py``.
"""

from .attacks import ATTACKS
from .builder import preference_rows, sft_rows, struq_rows
from .evaluate import TEST_WORDS, InjectionReport, attack_success, evaluate_injection
from .frontend import FRONTENDS, Frontend, add_delimiter_tokens, filter_data
from .gcg import GCGResult, GCGSettings, universal_suffix
from .tasks import Task, is_correct, make_task

__all__ = ["ATTACKS", "FRONTENDS", "TEST_WORDS", "Frontend", "GCGResult", "GCGSettings",
           "InjectionReport", "Task", "add_delimiter_tokens", "attack_success",
           "evaluate_injection", "filter_data", "is_correct", "make_task", "preference_rows",
           "sft_rows", "struq_rows", "universal_suffix"]
