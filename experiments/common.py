"""What the experiment scripts share: the results folder, the table writer, a headless
pyplot, ``--replot`` (redraw the table and figure from the saved JSON without training), and
the held-out check every experiment runs before it reports a held-out figure.

    >>> results_dir().name
    'results'
    >>> check_disjoint("prompts", ["a", "b"], ["c"])["overlap"]
    0
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def results_dir() -> Path:
    path = ROOT / "experiments" / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_table(name: str, lines: list[str]) -> None:
    """Write ``results/NAME.md`` and print it."""
    (results_dir() / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_or_replot(name: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` and save it as ``results/NAME.json``; with ``--replot``, load it."""
    path = results_dir() / f"{name}.json"
    if "--replot" in sys.argv:
        return json.loads(path.read_text())
    data = compute()
    path.write_text(json.dumps(data, indent=1))
    return data


def experiment(name: str, compute: Callable[[], Any], write: Callable[[Any], None],
               plot: Callable[[Any], None]) -> None:
    """An experiment's main: compute (or ``--replot``), then its table and its figure."""
    data = run_or_replot(name, compute)
    write(data)
    plot(data)
    print(f"wrote {results_dir() / name}.md, .json and .png")


class Overlap(SystemExit):
    """An experiment's evaluation items overlap what it trained on (and it did not say so)."""


def check_disjoint(what: str, evaluated: Iterable[Hashable], trained: Iterable[Hashable], *,
                   allowed: str | None = None) -> dict:
    """The evaluation items (prompts, scenes, users, tasks: any hashable key) against
    everything the run trained on. Returns the record each results file carries; stops the
    experiment (:class:`Overlap`, naming a few shared items) when they overlap, unless
    ``allowed`` states why the overlap is the point (then the record says so).

    >>> check_disjoint("tasks", [1, 2], [2, 3], allowed="the attack is tuned on its targets")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'what': 'tasks', 'evaluated': 2, 'trained': 2, 'overlap': 1, 'examples': ['2'],
     'allowed': 'the attack is tuned on its targets'}
    """
    evaluated, trained = set(evaluated), set(trained)
    shared = sorted(map(str, evaluated & trained))
    record = {"what": what, "evaluated": len(evaluated), "trained": len(trained),
              "overlap": len(shared), "examples": shared[:5], "allowed": allowed}
    if shared and allowed is None:
        raise Overlap(f"held-out check failed: {len(shared)} of {len(evaluated)} evaluation "
                      f"{what} are in the training data (e.g. {', '.join(shared[:3])})")
    return record


def disjointness_line(records: list[dict]) -> str:
    """One sentence for a results table: what was checked and what overlapped.

    >>> disjointness_line([check_disjoint("prompts", ["a"], ["b", "c"])])
    'Held out (checked in the script): 0 of 1 evaluation prompts in the training data (2).'
    """
    if not records:
        return ""
    parts = []
    for r in records:
        part = (f"{r['overlap']} of {r['evaluated']} evaluation {r['what']} in the training "
                f"data ({r['trained']})")
        if r["overlap"]:
            part += f", by design: {r['allowed']}"
        parts.append(part)
    return "Held out (checked in the script): " + "; ".join(parts) + "."
