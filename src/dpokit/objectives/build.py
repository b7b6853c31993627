"""The preference objective a config's ``loss`` section names.

    >>> from dpokit.config.schema import LossConfig
    >>> build_objective(LossConfig(name="ipo")).name, build_objective(LossConfig()).needs_reference
    ('ipo', True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..losses import param_values
from .preference import PreferenceObjective


def build_objective(loss: Any) -> PreferenceObjective:
    """``loss``: the ``loss`` section (:class:`dpokit.config.schema.LossConfig`): its loss
    names and weights, every declared hyper-parameter, and the f-divergence / WPO modifiers."""
    return PreferenceObjective.from_names(
        loss.name, loss.loss_weights, param_values(dataclasses.asdict(loss)),
        f_divergence=loss.f_divergence, f_alpha=loss.f_alpha, wpo=loss.wpo)
