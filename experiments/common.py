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
import math
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
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


def run_or_replot(name: str, compute: Callable[[], Any],
                  held_out: Callable[[], list[dict]] | None = None) -> Any:
    """``compute()`` and save it as ``results/NAME.json``; with ``--replot``, load it.
    ``held_out()`` (the :func:`check_disjoint` records) runs first, so an overlap stops the
    experiment before it trains; its records go into the JSON as ``disjointness`` (with
    ``--replot`` too: the check reads only the data files)."""
    path = results_dir() / f"{name}.json"
    records = held_out() if held_out else None
    data = json.loads(path.read_text()) if "--replot" in sys.argv else compute()
    if records is not None:
        data["disjointness"] = records
    path.write_text(json.dumps(data, indent=1))
    return data


def experiment(name: str, compute: Callable[[], Any], write: Callable[[Any], None],
               plot: Callable[[Any], None],
               held_out: Callable[[], list[dict]] | None = None) -> None:
    """An experiment's main: the held-out check, compute (or ``--replot``), then its table
    and its figure."""
    data = run_or_replot(name, compute, held_out)
    write(data)
    plot(data)
    print(f"wrote {results_dir() / name}.md, .json and .png")


def base_with_tokens(folder: Path, add: Callable[[Any, Any], Any]) -> str:
    """The embedded SmolLM2 with the tokens ``add(tokenizer, model)`` adds (embeddings
    resized), saved once as an ordinary model folder; its path."""
    from dpokit.policies.causal_lm.models import load_causal_lm, load_tokenizer

    if not (folder / "config.json").is_file():
        tokenizer, model = load_tokenizer("smollm2"), load_causal_lm("smollm2")
        add(tokenizer, model)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


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


def stamp_disjointness(name: str, records: list[dict]) -> None:
    """Write the held-out record into a finished experiment's ``results/NAME.md`` (the line
    :func:`disjointness_line` gives, replacing an older one, else after the first paragraph)
    and ``NAME.json`` (key ``disjointness``; a list of results becomes ``{"results": ...}``),
    without training again: for a script run before its check existed. The check reads only
    the data files the run trained and was evaluated on."""
    md, js = results_dir() / f"{name}.md", results_dir() / f"{name}.json"
    line = disjointness_line(records)
    lines = md.read_text().splitlines()
    old = [i for i, x in enumerate(lines) if x.startswith("Held out (checked in the script)")]
    if old:
        lines[old[0]] = line
    else:
        first_break = next((i for i, x in enumerate(lines) if i > 2 and not x.strip()), 0)
        lines[first_break:first_break] = ["", line]
    md.write_text("\n".join(lines) + "\n")
    if js.is_file():
        data = json.loads(js.read_text())
        data = data if isinstance(data, dict) else {"results": data}
        data["disjointness"] = records
        js.write_text(json.dumps(data, indent=1))
    print(line)


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


# --- seeds and intervals: what every headline reports ----------------------------------------
# A difference is a result only when its 95% interval excludes 0; otherwise "within noise".
# Training noise: the spread of a figure over training seeds (a t interval of the mean).
# Evaluation noise, separated: paired tests on the same items (McNemar for per-item
# right/wrong; a cluster bootstrap where items share a task or a constraint).

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)  # df 1..20


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval, over ``n`` units (seeds, or clusters resampled)."""

    mean: float
    low: float
    high: float
    n: int
    unit: str = "seeds"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, fmt: str = "{:+.3f}") -> str:
        """``+0.017 [-0.003, +0.037], 3 seeds``"""
        return (f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}], "
                f"{self.n} {self.unit}")

    def verdict(self) -> str:
        return "a result" if self.excludes_zero else "within noise"


def seed_interval(values: Sequence[float]) -> Interval:
    """The mean over training seeds and its 95% t interval (one seed: no interval, the
    endpoints are the mean and the verdict is "within noise").

    >>> seed_interval([1.0, 2.0, 3.0]).text("{:.2f}")
    '2.00 [-0.48, 4.48], 3 seeds'
    """
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, -math.inf, math.inf, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else NormalDist().inv_cdf(0.975)
    half = t * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def mcnemar(a_right: Sequence[bool], b_right: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test of two systems graded right / wrong on the same items: the items
    only A gets right (``a_only``), only B (``b_only``), and the two-sided binomial p of that
    split (ties of both right or both wrong carry no information).

    >>> mcnemar([True, True, True, False], [False, False, True, False])
    {'a_only': 2, 'b_only': 0, 'p': 0.5}
    """
    a_only = sum(a and not b for a, b in zip(a_right, b_right, strict=True))
    b_only = sum(b and not a for a, b in zip(a_right, b_right, strict=True))
    n, k = a_only + b_only, min(a_only, b_only)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def cluster_bootstrap(differences: Sequence[float], clusters: Sequence[Hashable],
                      draws: int = 2000, seed: int = 0) -> Interval:
    """The mean of per-item differences (B - A on the same items) and its 95% percentile
    interval, resampling whole clusters (the items of one task, or one constraint) so that
    items that share one are not counted as independent.

    >>> cluster_bootstrap([1.0, 1.0, -1.0, -1.0], ["a", "a", "b", "b"]).mean
    0.0
    """
    import random

    groups: dict[Hashable, list[float]] = {}
    for d, c in zip(differences, clusters, strict=True):
        groups.setdefault(c, []).append(d)
    keys = list(groups)
    rng = random.Random(seed)
    means = []
    for _ in range(draws):
        picked = [groups[rng.choice(keys)] for _ in keys]
        values = [v for g in picked for v in g]
        means.append(sum(values) / len(values))
    means.sort()
    mean = sum(differences) / len(differences)
    return Interval(mean, means[int(0.025 * draws)], means[int(0.975 * draws) - 1], len(keys),
                    "clusters")


def headline(name: str, interval: Interval, fmt: str = "{:+.3f}") -> str:
    """The line a README or page quotes: the figure, its interval and what it supports."""
    return f"{name}: {interval.text(fmt)} ({interval.verdict()})"
