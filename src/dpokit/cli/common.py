"""What every command shares, the library's and the applications': the one-line error, the
first-process print, paths of shipped files, ``--option`` per settings field, reading rows,
writing rows and figures.

    >>> one_line(ValueError("bad value\\n  in file x.yaml\\n"))
    'bad value / in file x.yaml'
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.paths import write_text_atomic
from ..core.types import Domain

REPO_ROOT = Path(__file__).resolve().parents[3]  # an editable install's checkout


def one_line(err: BaseException) -> str:
    """An exception as one line: its message's lines joined, a KeyError's quotes dropped."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " / ".join(lines) or type(err).__name__


def main_process_print(*args, **kwargs) -> None:
    """print on the first process only (torchrun / accelerate launch set RANK)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs)


def repo_relative(path: str | None) -> str | None:
    """Data paths in packaged recipes are relative to the repo root; find it from anywhere."""
    if path is None or Path(path).exists():
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


class CommandLineError(ValueError):
    """A command line that cannot run: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``dpokit: error: ...``, exit 2) like every other
    error of dpokit, not a usage block; subcommand parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        raise CommandLineError(f"{self.prog}: {message} (see {self.prog} --help)")


def number(kind: type, domain: Domain):
    """An argparse ``type`` that parses ``kind`` and refuses a value outside ``domain``,
    naming the domain, before any work starts.

    >>> number(float, Domain(low=1.0, low_inclusive=True))("-1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: -1.0 is outside [1, inf)
    """
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if domain.check("value", float(value)) is not None:
            raise argparse.ArgumentTypeError(f"{value} is outside {domain.describe()}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    parse.domain = domain  # type: ignore[attr-defined]  (the declared domain, for tests)
    return parse


def shipped_recipes() -> list[str]:
    folder = resources.files("dpokit") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def shipped_recipe(recipe: str | None) -> str | None:
    """A recipe name shipped with dpokit (``sft_reviews``) or a path; neither is an error
    naming the nearest shipped recipe."""
    if recipe is None or Path(recipe).exists():
        return recipe
    shipped = resources.files("dpokit") / "recipes" / f"{Path(recipe).stem}.yaml"
    if shipped.is_file():
        return str(shipped)
    names = shipped_recipes()
    close = difflib.get_close_matches(Path(recipe).stem, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (shipped: {', '.join(names)})"
    raise CommandLineError(f"recipe {recipe!r}: no such file and no shipped recipe of that "
                           f"name{hint}")


def check_outputs(inputs: list[str | None], outputs: list[str | None]) -> None:
    """Refuse an output that is one of the inputs (the same file once links are resolved),
    or two outputs that are one file: the input would be overwritten."""
    seen: dict[Path, str] = {}
    for given in inputs:
        if given:
            seen[Path(given).resolve()] = f"the input {given}"
    for given in outputs:
        if not given:
            continue
        resolved = Path(given).resolve()
        if resolved in seen:
            raise CommandLineError(f"output {given} is {seen[resolved]}: writing it would "
                                   f"destroy it; name another output file")
        seen[resolved] = f"another output ({given})"


def add_fields(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--name`` option per field of a settings dataclass, typed from its default; a
    numeric field must declare its domain (``option(..., domain=)``), checked on parsing."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default
        option = "--" + f.name.replace("_", "-")
        meaning = f.metadata.get("help", "")
        if isinstance(default, bool):
            parser.add_argument(option, type=lambda s: s.lower() in ("1", "true", "yes"),
                                default=default, metavar="BOOL",
                                help=f"{meaning} (default {default})")
        elif isinstance(default, tuple):
            parser.add_argument(option, type=lambda s: tuple(x for x in s.split(",") if x),
                                default=default, metavar="A,B",
                                help=f"{meaning} (default {','.join(default)})")
        else:
            choices = typing.get_args(hints[f.name])
            literal = typing.get_origin(hints[f.name]) is typing.Literal
            kind = type(default) if default is not None else next(
                t for t in typing.get_args(hints[f.name]) if t is not type(None))
            if kind in (int, float):
                domain = f.metadata.get("domain")
                if domain is None:
                    raise TypeError(f"{cls.__name__}.{f.name}: a numeric option declares its "
                                    f"domain")
                kind = number(kind, domain)
                meaning = f"{meaning}, in {domain.describe()}"
            parser.add_argument(option, type=str if literal else kind, default=default,
                                choices=choices if literal else None,
                                help=f"{meaning} (default {default})")


def settings_from(cls: type, args: argparse.Namespace, **extra: Any):
    """A settings dataclass from the ``--options`` :func:`add_fields` declared."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if hasattr(args, f.name)}
    return cls(**{**values, **extra})


def read(paths: list[str]):
    """Every row of every file, each with its file and 1-based row."""
    from ..data.io import load_records

    return [r for p in paths for r in load_records(p)]


def write_figures(path: str | None, figures: dict[str, Any]) -> None:
    """``--json PATH``: the figures as JSON, written atomically; nothing when no path."""
    if not path:
        return
    write_text_atomic(path, json.dumps(figures, indent=1, default=str))
    print(f"figures in {path}")


def write_built(built, out: str) -> int:
    """A builder's rows to ``out``, its report (kept, dropped by reason) printed and written
    next to them as ``OUT.report.json``."""
    from ..data.builders import write_rows

    path = write_rows(built.rows, out)
    report = write_text_atomic(str(path) + ".report.json",
                               json.dumps(built.report.to_dict(), indent=1))
    print(f"{path}: {built.report.summary()}")
    for reason, n in sorted(built.report.dropped.items(), key=lambda x: -x[1]):
        print(f"  dropped {n:6d}  {reason}")
    print(f"  (the same counts in {report})")
    return 0
