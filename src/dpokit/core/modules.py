"""Small module helpers every policy room uses.

    >>> m = torch.nn.Linear(1, 1).train()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch  # noqa: F401  (doctest)
from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, its training flag restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
