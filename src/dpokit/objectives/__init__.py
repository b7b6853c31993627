"""Objectives on the generic loop: preference optimization (paired or unpaired) and SFT.

An objective scores a batch with a policy and returns per-example losses and metrics
(:class:`dpokit.core.Objective`); it never imports a modality.
"""

from .build import build_objective
from .preference import F_DIVERGENCES, WPO_FORMS, PreferenceObjective, f_divergence_logratio
from .sft import SFTObjective

__all__ = ["F_DIVERGENCES", "WPO_FORMS", "PreferenceObjective", "SFTObjective",
           "build_objective", "f_divergence_logratio"]
