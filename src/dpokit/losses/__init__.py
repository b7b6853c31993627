"""Preference losses. ``import dpokit.losses`` needs only torch.

    >>> from dpokit.losses import get_loss
    >>> get_loss("simpo").needs_reference
    False
"""

from . import paired, reference_free, unpaired  # noqa: F401  (registers the losses)
from .registry import LossOutput, LossParams, LossSpec, available_losses, get_loss, register_loss

__all__ = ["LossOutput", "LossParams", "LossSpec", "available_losses", "get_loss", "register_loss"]
