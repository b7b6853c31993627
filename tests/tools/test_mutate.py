"""The mutator (tools/mutate.py) on a toy module: which mutants it plants, that each planted
source is the original with one change, what it leaves alone (docstrings, annotations,
f-strings, ``# pragma: no mutate``), the deterministic cap, and where it looks for the tests
that cover a module (tests mirror src)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mutate", REPO / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
sys.modules.setdefault("mutate", mutate)  # (its dataclasses look their module up)
spec.loader.exec_module(mutate)

TOY = '''"""A toy module."""


def score(x: float, y: float = 1.0) -> float:
    """Docstrings are not mutated."""
    if x > 0 and not y:
        return abs(x - y)
    total = max(x, y) * 2
    total += -x
    label = f"{x + 1}"
    z = torch.no_grad
    with torch.no_grad():
        w = x.detach()
    keep = x + 100  # pragma: no mutate
    return round(total, ndigits=3)
'''


def planted(m) -> str:
    return mutate.apply(TOY, m)


def test_the_toy_module_gets_each_kind_of_mutant():
    found = mutate.mutants(TOY)
    kinds = {(m.kind, m.description) for m in found}
    for expected in [("compare", "Gt -> GtE"), ("compare", "Gt -> Lt"), ("boolop", "And -> Or"),
                     ("unary", "drop unary Not"), ("unary", "drop unary USub"),
                     ("unwrap_call", "abs(x) -> x"), ("binop", "Sub -> Add"),
                     ("rename", "max -> min"), ("binop", "Mult -> Div"), ("const", "2 -> 3"),
                     ("const", "2 -> 1"), ("augassign", "Add= -> Sub="),
                     ("unwrap_method", "drop .detach()"),
                     ("no_grad", "no_grad() -> nullcontext()"),
                     ("drop_keyword", "drop keyword ndigits="), ("negate", "negate the condition"),
                     ("const", "0 -> 1")]:
        assert expected in kinds, expected
    lines = {m.line for m in found}
    assert 5 not in lines  # the docstring
    assert 10 not in lines  # the f-string's "x + 1"
    assert 14 not in lines  # pragma: no mutate
    assert any(m.description == "1.0 -> 2.0" for m in found)  # a default is code, mutated
    assert all("float" not in m.description for m in found)  # annotations are not


def test_each_mutant_changes_one_thing_and_compiles():
    original = ast.dump(ast.parse(TOY))
    seen = set()
    for m in mutate.mutants(TOY):
        source = planted(m)
        compile(source, "toy.py", "exec")
        assert ast.dump(ast.parse(source)) != original, m
        seen.add(source)
    assert len(seen) == len(mutate.mutants(TOY))  # no two mutants plant the same module
    [detach] = [m for m in mutate.mutants(TOY) if m.kind == "unwrap_method"]
    assert "w = x\n" in planted(detach)
    [nograd] = [m for m in mutate.mutants(TOY) if m.kind == "no_grad"]
    assert "nullcontext()" in planted(nograd) and "z = torch.no_grad" in planted(nograd)
    [flip] = [m for m in mutate.mutants(TOY) if m.description == "Gt -> Lt"]
    assert "if x < 0 and (not y):" in planted(flip)


def test_the_cap_draws_the_same_mutants_every_time():
    found = mutate.mutants(TOY)
    a = mutate.select(found, 5, "src/dpokit/x.py")
    assert len(a) == 5 and a == mutate.select(found, 5, "src/dpokit/x.py")
    assert [m.index for m in a] == sorted(m.index for m in a)
    assert mutate.select(found, None, "x") == found


def test_tests_mirror_src():
    src = REPO / "src" / "dpokit"
    assert "tests/train/test_health.py" in mutate.covering_tests(src / "train" / "health.py")
    assert "tests/eval/test_judges.py" in mutate.covering_tests(src / "eval" / "judges.py")
    found = mutate.covering_tests(src / "losses" / "adaptive.py")  # no test_adaptive.py:
    assert found == ["tests/losses"]  # no file names the module either: the whole folder
