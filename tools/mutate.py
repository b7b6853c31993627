"""Mutation testing with the standard library's ``ast``: plant one small bug at a time in a
module (a swapped operator, a flipped comparison, a constant off by one, a sign dropped, a
``.detach()`` or ``abs`` removed, a keyword argument dropped, a condition negated...), run the
tests that cover it, and list the mutants no test noticed (the survivors) with file:line.

    .venv/bin/python tools/mutate.py src/dpokit/train/health.py --tests tests/train/test_health.py
    .venv/bin/python tools/mutate.py src/dpokit/losses/ --max-mutants 40
    .venv/bin/python tools/mutate.py src/dpokit/eval/judges.py --changed HEAD~1 --list

The working tree is never touched: the package is copied once into a temporary folder, each
mutant is written into the copy, and the tests run with the copy first on ``PYTHONPATH`` (their
subprocesses too). By default each mutant's pytest runs in a process forked from one that has
already imported torch and transformers (``--no-fork``: a fresh interpreter per mutant). A
mutant counts as killed when its tests fail, error or run past the timeout. Not part of the
default test run: ``tests/tools/test_mutate.py`` tests the mutator itself on a toy module.
A line ending in ``# pragma: no mutate`` is left alone. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"

BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
               ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
               ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
COMPARE_SWAPS = {  # each comparison: its boundary twin, then its flip
    ast.Lt: (ast.LtE, ast.Gt), ast.LtE: (ast.Lt, ast.GtE), ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.LtE), ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,), ast.IsNot: (ast.Is,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,)}
NAME_SWAPS = {"max": "min", "min": "max", "amax": "amin", "amin": "amax", "sum": "mean",
              "mean": "sum", "clamp_min": "clamp_max", "clamp_max": "clamp_min",
              "any": "all", "all": "any", "argmax": "argmin", "argmin": "argmax"}
UNWRAP_METHODS = {"detach", "detach_", "abs", "exp", "log", "neg", "float", "clone",
                  "contiguous", "sqrt"}
UNWRAP_FUNCTIONS = {"abs", "float", "round", "sorted", "reversed"}
NO_GRAD = {"no_grad", "inference_mode"}


@dataclass
class Mutant:
    index: int  # the node's position in ast.walk order
    kind: str  # which operator
    arg: str  # its argument (the replacement, or the keyword to drop)
    line: int
    col: int
    description: str

    def key(self) -> str:
        return f"{self.line}:{self.col}:{self.kind}:{self.arg}"


def _name(op: type | ast.AST) -> str:
    return (op if isinstance(op, type) else type(op)).__name__


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes no mutant touches: docstrings, annotations, f-strings, ``__all__``."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            mark(body[0])
        if isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.arg):
            mark(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
        elif isinstance(node, ast.JoinedStr):
            mark(node)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            mark(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            mark(node)
    return skip


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _sites(node: ast.AST) -> list[tuple[str, str, str]]:
    """(kind, arg, description) of every mutant of one node."""
    out: list[tuple[str, str, str]] = []
    if isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        new = BINOP_SWAPS[type(node.op)]
        out.append(("binop", _name(new), f"{_name(node.op)} -> {_name(new)}"))
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAPS:
        new = BINOP_SWAPS[type(node.op)]
        out.append(("augassign", _name(new), f"{_name(node.op)}= -> {_name(new)}="))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in COMPARE_SWAPS.get(type(op), ()):
                out.append(("compare", f"{i}:{_name(new)}", f"{_name(op)} -> {_name(new)}"))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append(("boolop", _name(new), f"{_name(node.op)} -> {_name(new)}"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        out.append(("unary", "", f"drop unary {_name(node.op)}"))
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes):
        v = node.value
        if isinstance(v, bool):
            out.append(("const", repr(not v), f"{v!r} -> {not v!r}"))
        elif isinstance(v, int):
            out.append(("const", repr(v + 1), f"{v!r} -> {v + 1!r}"))
            if v > 0:
                out.append(("const", repr(v - 1), f"{v!r} -> {v - 1!r}"))
        elif isinstance(v, float):
            new = 2 * v if v else 1.0
            out.append(("const", repr(new), f"{v!r} -> {new!r}"))
    elif isinstance(node, ast.Call):
        name = _callee(node)
        if isinstance(node.func, ast.Attribute) and name in UNWRAP_METHODS and not node.args:
            out.append(("unwrap_method", name, f"drop .{name}()"))
        if isinstance(node.func, ast.Name) and name in UNWRAP_FUNCTIONS and len(node.args) == 1 \
                and not node.keywords:
            out.append(("unwrap_call", name, f"{name}(x) -> x"))
        if name in NAME_SWAPS:
            out.append(("rename", NAME_SWAPS[name], f"{name} -> {NAME_SWAPS[name]}"))
        for kw in node.keywords:
            if kw.arg is not None:
                out.append(("drop_keyword", kw.arg, f"drop keyword {kw.arg}="))
    elif isinstance(node, ast.If | ast.While | ast.IfExp | ast.Assert):
        out.append(("negate", "", "negate the condition"))
    elif isinstance(node, ast.withitem) and isinstance(node.context_expr, ast.Call) and \
            _callee(node.context_expr) in NO_GRAD:
        out.append(("no_grad", "", f"{_callee(node.context_expr)}() -> nullcontext()"))
    return out


def mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    skip = _skipped_nodes(tree)
    lines = source.splitlines()
    found = []
    for index, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", None) or getattr(
            getattr(node, "context_expr", None), "lineno", None)
        if id(node) in skip or line is None:
            continue
        if "pragma: no mutate" in lines[line - 1]:
            continue
        col = getattr(node, "col_offset", None)
        if col is None:
            col = node.context_expr.col_offset
        for kind, arg, text in _sites(node):
            found.append(Mutant(index, kind, arg, line, col, text))
    return found


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return
    raise ValueError("node not found")


def apply(source: str, m: Mutant) -> str:
    """The module's source with mutant ``m`` planted."""
    tree = ast.parse(source)
    node = list(ast.walk(tree))[m.index]
    if m.kind in ("binop", "augassign"):
        node.op = getattr(ast, m.arg)()
    elif m.kind == "compare":
        i, op = m.arg.split(":")
        node.ops[int(i)] = getattr(ast, op)()
    elif m.kind == "boolop":
        node.op = getattr(ast, m.arg)()
    elif m.kind == "unary":
        _replace(tree, node, node.operand)
    elif m.kind == "const":
        node.value = ast.literal_eval(m.arg)
    elif m.kind == "unwrap_method":
        _replace(tree, node, node.func.value)
    elif m.kind == "unwrap_call":
        _replace(tree, node, node.args[0])
    elif m.kind == "rename":
        if isinstance(node.func, ast.Name):
            node.func.id = m.arg
        else:
            node.func.attr = m.arg
    elif m.kind == "drop_keyword":
        node.keywords = [k for k in node.keywords if k.arg != m.arg]
    elif m.kind == "negate":
        node.test = ast.UnaryOp(ast.Not(), node.test)
    elif m.kind == "no_grad":
        node.context_expr = ast.parse("__import__('contextlib').nullcontext()",
                                      mode="eval").body
    else:
        raise ValueError(m.kind)
    return ast.unparse(ast.fix_missing_locations(tree))


def changed_lines(path: Path, ref: str) -> set[int]:
    """The lines of ``path`` that differ from git ``ref`` (what a change touched)."""
    diff = subprocess.run(["git", "diff", "-U0", ref, "--", str(path)], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    lines: set[int] = set()
    for start, count in re.findall(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@", diff, re.M):
        lines.update(range(int(start), int(start) + int(count or 1)))
    return lines


def covering_tests(module: Path) -> list[str]:
    """tests mirror src: ``src/dpokit/a/b/c.py`` -> ``tests/a/b/test_c*.py``; else the test
    files under ``tests/a/`` that name the module ``dpokit.a.b.c``; else ``tests/a/``."""
    rel = module.resolve().relative_to(SRC / "dpokit")
    mirror = REPO / "tests" / rel.parent
    direct = sorted(mirror.glob(f"test_{rel.stem}*.py")) if mirror.is_dir() else []
    if direct:
        return [str(p.relative_to(REPO)) for p in direct]
    dotted = "dpokit." + ".".join(rel.with_suffix("").parts)
    package, stem = dotted.rpartition(".")[0], rel.stem
    top = REPO / "tests" / rel.parts[0] if len(rel.parts) > 1 else REPO / "tests"
    pattern = re.compile(rf"{re.escape(dotted)}\b|from {re.escape(package)} import .*\b{stem}\b")
    named = sorted(p for p in top.rglob("test_*.py") if pattern.search(p.read_text()))
    if named:
        return [str(p.relative_to(REPO)) for p in named]
    return [str(top.relative_to(REPO))]


class Runner:
    """Runs pytest on a copy of the package; ``fork``: from a warm process (torch imported)."""

    def __init__(self, tests: list[str], pytest_args: list[str], fork: bool,
                 base: str | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix="dpokit-mutants-"))
        if base is None:  # the working tree as it is
            shutil.copytree(SRC / "dpokit", self.tmp / "dpokit",
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:  # the package at a git ref (others' edits in progress left out)
            archive = subprocess.run(["git", "archive", base, "src/dpokit"], cwd=REPO,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(self.tmp)],
                           input=archive, check=True)
        self.tests, self.fork = tests, fork
        # the project's own pytest settings, whatever the test paths (a copy's doctests too)
        self.args = ["-x", "-q", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
                     "--rootdir", str(REPO), *pytest_args, *tests]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(self.tmp)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                               else [])), PYTHONDONTWRITEBYTECODE="1")
        if fork:
            import pytest  # noqa: F401  (warm: the heavy imports happen once, here)
            import torch  # noqa: F401
            import transformers  # noqa: F401

    def copy_of(self, module: Path) -> Path:
        return self.tmp / module.resolve().relative_to(SRC)

    def run(self, timeout: float, log: Path) -> tuple[str, float]:
        """(``passed`` / ``failed`` / ``timeout``, seconds)."""
        start = time.monotonic()
        if self.fork:
            pid = os.fork()
            if pid == 0:  # the child: the copy first on the path, the output to the log
                try:
                    os.setsid()
                    os.environ.update(self.env)
                    sys.path.insert(0, str(self.tmp))
                    os.chdir(REPO)
                    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    import pytest

                    code = int(pytest.main(self.args))
                except BaseException:  # noqa: B036  (the child must exit, whatever happened)
                    code = 99
                os._exit(code)
            try:
                while True:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        code = os.waitstatus_to_exitcode(status)
                        break
                    if time.monotonic() - start > timeout:
                        _kill_group(pid)
                        os.waitpid(pid, 0)
                        return "timeout", time.monotonic() - start
                    time.sleep(0.05)
            except BaseException:  # Ctrl-C, SIGTERM: the mutant's tests stop with us
                _kill_group(pid)
                raise
        else:
            with open(log, "w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "pytest", *self.args], cwd=REPO,
                                        env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(proc.pid)
                    proc.wait()
                    return "timeout", time.monotonic() - start
        return ("passed" if code == 0 else "failed"), time.monotonic() - start

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _first_failure(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return lines[0][:160] if lines else ""


def select(found: list[Mutant], cap: int | None, seed: str) -> list[Mutant]:
    """At most ``cap`` mutants, drawn deterministically (the module's path seeds the draw)."""
    if cap is None or len(found) <= cap:
        return found
    picked = random.Random(seed).sample(range(len(found)), cap)
    return [found[i] for i in sorted(picked)]


def mutate_module(module: Path, runner: Runner | None, args: argparse.Namespace) -> dict:
    source = module.read_text()
    rel = str(module.resolve().relative_to(REPO))
    found = mutants(source)
    if args.changed:
        touched = changed_lines(module, args.changed)
        found = [m for m in found if m.line in touched]
    chosen = select(found, args.max_mutants, rel)
    if args.list or runner is None:
        for m in chosen:
            print(f"{rel}:{m.line}: {m.description}    | {source.splitlines()[m.line - 1].strip()}")
        return {"module": rel, "mutants": len(found), "tried": len(chosen)}
    copy_path = runner.copy_of(module)
    copy_path.write_text(source)  # the module as it is in the working tree
    if args.doctests and ">>>" in source:  # the module's own examples test it too
        runner.args.append(str(copy_path))
    logs = Path(args.logs) if args.logs else runner.tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base_log = logs / f"{module.stem}.baseline.log"
    outcome, base = runner.run(args.baseline_timeout, base_log)
    if outcome != "passed":
        tail = base_log.read_text(errors="replace").splitlines()[-25:] if base_log.exists() \
            else []
        print(f"{rel}: the unmutated tests do not pass ({outcome}):\n" + "\n".join(tail))
        return {"module": rel, "error": f"baseline {outcome}"}
    timeout = args.timeout or max(10.0, 3 * base + 5)
    print(f"{rel}: {len(found)} mutants, trying {len(chosen)}; tests {' '.join(runner.tests)} "
          f"({base:.1f}s unmutated, timeout {timeout:.0f}s)", flush=True)
    results = []
    lines = source.splitlines()
    try:
        for n, m in enumerate(chosen, 1):
            try:
                planted = apply(source, m)
                compile(planted, rel, "exec")
            except (SyntaxError, ValueError, TypeError) as e:
                results.append({**asdict(m), "outcome": "invalid", "detail": str(e)})
                continue
            copy_path.write_text(planted)
            log = logs / f"{module.stem}.{n}.log"
            outcome, seconds = runner.run(timeout, log)
            status = {"passed": "SURVIVED", "failed": "killed", "timeout": "killed (timeout)"}[
                outcome]
            detail = _first_failure(log) if outcome == "failed" else ""
            results.append({**asdict(m), "outcome": status, "seconds": round(seconds, 1),
                            "detail": detail, "source": lines[m.line - 1].strip()})
            if args.verbose or status == "SURVIVED":
                print(f"  [{n}/{len(chosen)}] {status:8} {rel}:{m.line}: {m.description}    | "
                      f"{lines[m.line - 1].strip()}", flush=True)
            if not args.keep_logs and status != "SURVIVED":
                log.unlink(missing_ok=True)
    finally:
        copy_path.write_text(source)
    valid = [r for r in results if r["outcome"] != "invalid"]
    killed = sum(r["outcome"].startswith("killed") for r in valid)
    survivors = [r for r in valid if r["outcome"] == "SURVIVED"]
    rate = killed / len(valid) if valid else 1.0
    print(f"{rel}: killed {killed}/{len(valid)} ({rate:.0%}), {len(survivors)} survived"
          + (f", {len(results) - len(valid)} invalid" if len(valid) < len(results) else ""),
          flush=True)
    return {"module": rel, "mutants": len(found), "tried": len(valid), "killed": killed,
            "survivors": survivors, "tests": runner.tests, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="modules or packages under src/dpokit")
    p.add_argument("--tests", nargs="+", help="the covering test files (default: tests mirror "
                   "src: tests/a/b/test_c*.py for src/dpokit/a/b/c.py)")
    p.add_argument("--max-mutants", type=int, default=None,
                   help="at most this many mutants per module, drawn deterministically")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per mutant (default: 3x the unmutated run + 5, at least 10)")
    p.add_argument("--baseline-timeout", type=float, default=600)
    p.add_argument("--changed", metavar="REF", help="only the lines changed since git REF")
    p.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    p.add_argument("--no-doctests", dest="doctests", action="store_false",
                   help="leave out the module's own doctests (run by default when it has any)")
    p.add_argument("--no-fork", dest="fork", action="store_false",
                   help="a fresh interpreter per mutant (slower; no warm process)")
    p.add_argument("--base", metavar="REF", help="the rest of the package from git REF "
                   "(the mutated modules from the working tree): others' edits in progress "
                   "in the same checkout stay out")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments, one string")
    p.add_argument("--json", help="write every mutant's outcome to this file")
    p.add_argument("--logs", help="keep the pytest logs in this folder")
    p.add_argument("--keep-logs", action="store_true", help="keep the killed mutants' logs too")
    p.add_argument("-v", "--verbose", action="store_true", help="print every mutant")
    args = p.parse_args(argv)
    # SIGTERM as Ctrl-C: the copy is removed and a running mutant's tests are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    modules: list[Path] = []
    for raw in args.paths:
        path = Path(raw).resolve()
        modules += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for m in modules:
        if SRC not in m.parents:
            p.error(f"{m} is not under {SRC}")
    reports = []
    for module in modules:
        if args.list:
            reports.append(mutate_module(module, None, args))
            continue
        tests = args.tests or covering_tests(module)
        runner = Runner(tests, shlex.split(args.pytest_args), args.fork, args.base)
        try:
            reports.append(mutate_module(module, runner, args))
        finally:
            runner.close()
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    if not args.list:
        print("\nkill rates:")
        for r in reports:
            if "killed" in r:
                rate = r["killed"] / r["tried"] if r["tried"] else 1.0
                print(f"  {r['module']}: {r['killed']}/{r['tried']} ({rate:.0%}) of "
                      f"{r['mutants']} mutants")
            elif "error" in r:
                print(f"  {r['module']}: {r['error']}")
        survivors = [(r["module"], s) for r in reports for s in r.get("survivors", [])]
        if survivors:
            print("\nsurvivors:")
            for module, s in survivors:
                print(f"  {module}:{s['line']}: {s['description']}    | {s['source']}")
    return 1 if any(r.get("survivors") or r.get("error") for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
