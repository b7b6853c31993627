"""How an application adds to the command line without the library importing it.

An application declares a ``register(cli: Extensions)`` function as an entry point of the
``dpokit.apps`` group (``pyproject.toml``); :func:`load_extensions` calls each, and the
command line builds its parsers and dispatch from what they added: kinds of ``dpokit pairs``,
modes of ``dpokit eval`` (an option that, when given, runs the application's evaluation),
or whole commands.

    >>> ext = Extensions()
    >>> ext.add_pair_kind("echo", "copy rows", lambda p: None, lambda args: 0)
    >>> sorted(ext.pair_kinds)
    ['echo']
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
GROUP = "dpokit.apps"


@dataclass
class Extension:
    """One addition: its help line, how it adds its arguments, what runs it."""

    help: str
    add_arguments: AddArguments
    run: Run


@dataclass
class EvalMode(Extension):
    """A mode of ``dpokit eval``: ``dest`` is the option whose presence selects it."""

    dest: str = ""


@dataclass
class Extensions:
    pair_kinds: dict[str, Extension] = field(default_factory=dict)
    eval_modes: list[EvalMode] = field(default_factory=list)
    commands: dict[str, Extension] = field(default_factory=dict)

    def add_pair_kind(self, name: str, help: str, add_arguments: AddArguments,
                      run: Run) -> None:
        """``dpokit pairs NAME INPUT... --out OUT`` (inputs and ``--out`` are given)."""
        self._unique(name, self.pair_kinds, "pairs kind")
        self.pair_kinds[name] = Extension(help, add_arguments, run)

    def add_eval_mode(self, dest: str, help: str, add_arguments: AddArguments, run: Run) -> None:
        """``dpokit eval MODEL --DEST ...``: ``add_arguments`` adds ``--DEST`` and its options;
        ``run`` replaces the preference / generation evaluation when ``--DEST`` is given."""
        if any(m.dest == dest for m in self.eval_modes):
            raise ValueError(f"two applications add the eval mode --{dest}")
        self.eval_modes.append(EvalMode(help, add_arguments, run, dest))

    def add_command(self, name: str, help: str, add_arguments: AddArguments, run: Run) -> None:
        self._unique(name, self.commands, "command")
        self.commands[name] = Extension(help, add_arguments, run)

    @staticmethod
    def _unique(name: str, table: dict, what: str) -> None:
        if name in table:
            raise ValueError(f"two applications add the {what} {name!r}")


def load_extensions() -> Extensions:
    """What every installed application registered (entry points of ``dpokit.apps``)."""
    extensions = Extensions()
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        entry.load()(extensions)
    return extensions
