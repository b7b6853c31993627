"""Where dpokit keeps its caches (converted models, reference log-probs), and how it replaces
a file so that an interrupted write leaves the old one.

    >>> cache_root().name in ("dpokit", os.environ.get("DPOKIT_CACHE", "dpokit").split("/")[-1])
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$DPOKIT_CACHE``, else ``~/.cache/dpokit``."""
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes the new content to ``PATH.tmp``, which is then renamed over
    ``path``: an interrupted or failed write leaves the old file (its ``.tmp`` removed; one a
    killed process left is overwritten by the next write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` into ``path`` through :func:`replace_atomically`."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text))
