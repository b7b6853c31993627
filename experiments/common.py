"""What the experiment scripts share: the results folder, the table writer, a headless
pyplot, and ``--replot`` (redraw the table and figure from the saved JSON without training).

    >>> results_dir().name
    'results'
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
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
