"""How a config field is declared: :func:`setting` (default, meaning, domain, what it is) and
:func:`computes` (whether a change changes what training computes).

    >>> from dataclasses import dataclass, fields
    >>> @dataclass
    ... class Section:
    ...     beta: float = setting(0.1, "the KL weight", computes=True)
    >>> fields(Section)[0].metadata["help"]
    'the KL weight'
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from ..core.types import Domain


@dataclasses.dataclass(frozen=True)
class Follows:
    """A default derived from another field of the same section when the user sets that one
    and not this: ``rule`` maps the other field's value to this one's; ``says``, the rule in
    words for the run's first line. The declared default must equal ``rule(other's default)``.

    >>> Follows("max_length", lambda n: n // 2, "half of max_length").rule(64)
    32
    """

    source: str
    rule: Any  # Callable[[value of source], value]
    says: str


def setting(default: Any, help: str, domain: Domain | None = None, *, factory: Any = None,
            computes: bool | None = None, path: bool = False, sharded: bool = True,
            follows: Follows | None = None) -> Any:
    """A config field with its meaning, (for numbers) its domain, and what it is:

    - ``computes``: whether a change changes what training computes (a resumed run refuses
      one); None: the section's ``COMPUTES``. Paths, plain twins of fast paths and the
      evaluation's settings do not.
    - ``path``: a file or folder a packaged recipe names relative to the repository root.
    - ``sharded=False``: set to anything but its default, refused with FSDP2 / DeepSpeed.
    - ``follows``: when unset, derived from another field (:class:`Follows`).
    """
    if follows is not None:
        help = f"{help} (unset: {follows.says})"
    metadata = {"help": help, "domain": domain, "computes": computes, "path": path,
                "sharded": sharded, "follows": follows}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def computes(section: type, f: dataclasses.Field) -> bool:
    """Whether field ``f`` of ``section`` changes what training computes."""
    declared = f.metadata.get("computes")
    return getattr(section, "COMPUTES", True) if declared is None else declared
