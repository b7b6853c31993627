"""Every shell command the README and the documentation pages show goes through the real
command line: ``dpokit`` commands (also under ``torchrun`` / ``accelerate launch``) are parsed
by the real parser with every application's additions, a recipe name resolves to a shipped
recipe or a file, ``key=value`` overrides load into the typed config (unknown keys, values
out of their domain and impossible combinations fail here), and every repository path a
command names (scripts, data, configs) exists. A page may use placeholders (``MODEL``,
``my_recipe.yaml``): they are strings to the parser, as they are to the shell."""

from __future__ import annotations

import re
import shlex
from importlib.util import find_spec

import pytest
from conftest import REPO

from dpokit.cli import build_parser, split_args
from dpokit.cli.common import CommandLineError
from dpokit.cli.extensions import load_extensions
from dpokit.cli.train import load

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
REPO_DIRS = ("data/", "configs/", "src/", "experiments/", "bench/", "docs/")
TOOLS = ("python3 -m venv", ".venv/bin/pip", "pip ", ".venv/bin/ruff", ".venv/bin/mkdocs",
         "mkdocs ", ".venv/bin/python -m pytest", "huggingface-cli ")


def shell_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of every ``bash`` block (continuations joined,
    comments dropped, ``&&`` chains split)."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    found += [(page.relative_to(REPO).as_posix(), part.strip())
                              for part in line.split("&&")]
    return found


COMMANDS = shell_commands()
PARSER = build_parser(load_extensions())


def dpokit_argv(words: list[str]) -> list[str] | None:
    """The dpokit arguments of a command, or None when it does not run dpokit."""
    for i, word in enumerate(words):
        if word in ("dpokit", ".venv/bin/dpokit"):
            return words[i + 1:]
        if word == "-m" and i + 1 < len(words) and words[i + 1] == "dpokit.cli":
            return words[i + 2:]
    return None


def check_dpokit(argv: list[str]) -> None:
    try:
        args = PARSER.parse_args(argv)
    except CommandLineError as err:
        raise AssertionError(f"the parser refuses `dpokit {' '.join(argv)}`: {err}") from err
    if args.command in ("train", "sft"):
        recipe, overrides = split_args(args.args)
        placeholder = recipe is not None and recipe.startswith("my")  # my_recipe.yaml, my.yaml
        load(None if placeholder else recipe, overrides)  # recipe, keys, values, combinations
    if args.command == "quickstart":
        load("quickstart", args.overrides)


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:40]}" for p, c in COMMANDS])
def test_every_documented_command_runs_through_the_real_command_line(page, command):
    words = shlex.split(command)
    for word in words:  # repository paths (a value of key=value too) exist
        path = word.partition("=")[2] if "=" in word and not word.startswith("-") else word
        if path.startswith(REPO_DIRS):
            assert (REPO / path).exists(), f"{page}: `{command}` names {path}, which is missing"
    argv = dpokit_argv(words)
    if argv is not None:
        check_dpokit(argv)
    elif command.startswith(TOOLS):
        return
    elif words[0] in ("python", "python3", ".venv/bin/python") and words[1] == "-m":
        assert find_spec(words[2]) is not None, f"{page}: no module {words[2]}"
    elif words[0] in ("python", "python3", "bash"):
        assert (REPO / words[1]).is_file(), f"{page}: no script {words[1]}"
    else:
        raise AssertionError(f"{page}: `{command}` is not a command this test knows")


def test_the_pages_show_commands_and_the_check_can_fail():
    assert len(COMMANDS) > 30
    assert any(dpokit_argv(shlex.split(c)) for _, c in COMMANDS)
    with pytest.raises(AssertionError, match="refuses"):
        check_dpokit(["pairs", "votez", "x.jsonl", "--out", "y.jsonl"])
    with pytest.raises(ValueError, match="did you mean 'beta'"):
        check_dpokit(["train", "my_recipe.yaml", "betta=0.5"])
    with pytest.raises(ValueError, match="no shipped recipe of that name"):
        check_dpokit(["train", "no_such_recipe", "beta=0.5"])


def python_blocks() -> list[tuple[str, str]]:
    return [(page.relative_to(REPO).as_posix(), block) for page in PAGES
            for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


@pytest.mark.parametrize("page,code", python_blocks(), ids=[p for p, _ in python_blocks()])
def test_every_documented_python_example_compiles_and_its_imports_resolve(page, code):
    """The library examples: valid Python whose every ``import`` names what dpokit has (the
    examples train SmolLM2 for minutes, so the rest is not run here)."""
    compile(code, page, "exec")
    tree = __import__("ast").parse(code)
    for node in tree.body:
        if type(node).__name__ in ("Import", "ImportFrom"):
            exec(compile(__import__("ast").Module([node], []), page, "exec"), {})
