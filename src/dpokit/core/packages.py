"""Optional packages: what needs one imports it through :func:`need`, so that a missing one is
a single line naming the extra that installs it, not ``No module named ...``.

    >>> need("math", "data", "a doctest").sqrt(4.0)
    2.0
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingPackage(ImportError):
    """An optional package is not installed; the message says which extra installs it."""


def need(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose``; when it is missing, raise :class:`MissingPackage`
    with the install line of the dpokit extra that brings it (``pip install 'dpokit[data]'``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and module.split(".")[0] != err.name.split(".")[0]:
            raise  # the package is there, one of its own imports failed: the real error
        raise MissingPackage(f"{purpose} needs the package {module.split('.')[0]!r}, which "
                             f"is not installed: pip install 'dpokit[{extra}]'") from err
