"""The folder tree is the architecture: rooms on floors, each importing only from the floors
below it, no import cycle between modules, generic code blind to every modality, the command
line blind to every application, no source file over 400 lines. Every import counts, the
lazy ones inside functions too."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "dpokit"

# floor -> rooms; a room imports from its own floor's rooms or lower floors only
FLOORS = [
    ["core"],
    ["losses"],
    ["objectives", "data", "data.builders"],
    ["config"],
    ["train"],
    ["data.text", "policies"],  # the modalities
    ["eval"],
    ["runs"],
    ["cli"],
    ["apps"],
]
GENERIC = ["core", "losses", "objectives", "data", "data.builders", "config", "train"]
BANNED_FROM_GENERIC = ("data.text", "policies", "runs", "apps", "cli", "eval")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """dotted module name (without ``dpokit.``) -> file; a package is its ``__init__``."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every dpokit module ``name`` imports (module level or inside functions), resolved to
    the deepest known module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name.removeprefix("dpokit.") for a in node.names
                       if a.name.startswith("dpokit.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("dpokit"):
                module = node.module.removeprefix("dpokit").lstrip(".")
            else:
                continue
            targets = [f"{module}.{a.name}".strip(".") for a in node.names] or [module]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target != name:
                found.add(target)
    return found


def room(module: str) -> str:
    """``policies.causal_lm.policy`` -> ``policies``; ``data.text.pairs`` -> ``data.text``."""
    parts = module.split(".")
    if parts[0] == "data" and len(parts) > 1 and parts[1] in ("text", "builders"):
        return ".".join(parts[:2])
    return parts[0] or "dpokit"


FLOOR = {r: i for i, rooms in enumerate(FLOORS) for r in rooms}
KNOWN = modules()
GRAPH = {name: imports(name, path, KNOWN) for name, path in KNOWN.items()}


def test_every_room_has_a_floor():
    rooms = {room(m) for m in KNOWN} - {"dpokit"}
    assert rooms <= set(FLOOR), f"rooms without a floor: {rooms - set(FLOOR)}"


def test_no_import_points_up_a_floor():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
              if room(b) != "dpokit" and FLOOR[room(b)] > FLOOR[room(a)]]
    assert not upward, "imports of a higher floor:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_modules():
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], itertools.count()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = next(counter)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_generic_code_imports_no_modality_run_builder_application_cli_or_eval():
    generic = [m for m in KNOWN if room(m) in GENERIC]
    assert len(generic) > 30
    bad = [f"{m} -> {t}" for m in generic for t in GRAPH[m]
           if t.startswith(BANNED_FROM_GENERIC)]
    assert not bad, "\n".join(bad)


def test_the_library_imports_no_application():
    bad = [f"{m} -> {t}" for m, targets in GRAPH.items() if not m.startswith("apps")
           for t in targets if t.startswith("apps")]
    assert not bad, "\n".join(bad)


def test_no_source_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize("planted, banned", [
    ("from ..data.text.pairs import build_pairs", "data.text"),
    ("from ..runs import builder_for", "runs"),
    ("from ..apps.secalign import tasks", "apps"),
    ("from ..policies.causal_lm import CausalLMPolicy", "policies"),
    ("from ..cli.common import read", "cli"),
    ("from ..eval.metrics import Estimate", "eval"),
])
def test_the_guard_catches_a_planted_import(tmp_path, planted, banned):
    """The guard can fail: an import planted in a generic module (inside a function, as a
    lazy import would be) is found and resolved to its room."""
    path = tmp_path / "loop.py"
    path.write_text(f"def f():\n    {planted}\n")
    found = imports("train.loop", path, KNOWN)
    assert any(t.startswith(banned) for t in found), found
    assert any(FLOOR[room(t)] > FLOOR["train"] for t in found)


def test_tests_mirror_src_and_generic_tests_build_their_own_policy():
    """Each test folder is a room of src/ (tests/policies/causal_lm <-> policies/causal_lm)
    or one of the script folders bench/, experiments/ and tools/;
    tests of generic rooms build their policy from tests/helpers.py, never from a run
    builder, an application or the command line."""
    tests = Path(__file__).resolve().parent
    for folder in {p.parent for p in tests.rglob("test_*.py")} - {tests}:
        rel = folder.relative_to(tests)
        top = rel.parts[0] in ("bench", "experiments", "tools")  # the repo's script folders
        mirrored = tests.parent / rel.parts[0] if top else ROOT / rel
        assert mirrored.is_dir(), f"tests/{rel} mirrors no folder of src/dpokit"
    for room_name in GENERIC:
        for path in (tests / room_name.replace(".", "/")).glob("test_*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                        a.name for a in node.names]
                    bad = [n for n in names if n.startswith(("dpokit.runs", "dpokit.apps",
                                                             "dpokit.cli"))]
                    assert not bad, f"{path.relative_to(tests)} imports {bad}"
