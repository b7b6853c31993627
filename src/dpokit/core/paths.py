"""Where dpokit keeps its caches (converted models, reference log-probs).

    >>> cache_root().name in ("dpokit", os.environ.get("DPOKIT_CACHE", "dpokit").split("/")[-1])
    True
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DPOKIT_CACHE``, else ``~/.cache/dpokit``."""
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))
