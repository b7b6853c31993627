"""Preference losses. ``import dpokit.losses`` needs only torch.

    >>> from dpokit.losses import get_loss
    >>> get_loss("simpo").needs_reference
    False
"""

from ..core.types import LossOutput
from . import adaptive, anchored, gravity, paired, reference_free, unpaired  # noqa: F401  (registers them)
from .registry import (
    LossParam,
    LossParams,
    LossSpec,
    Statistic,
    available_losses,
    declared_params,
    get_loss,
    loss_needs,
    param_values,
    register_loss,
)

__all__ = ["LossOutput", "LossParam", "LossParams", "LossSpec", "Statistic", "available_losses",
           "declared_params", "get_loss", "loss_needs", "param_values", "register_loss"]
