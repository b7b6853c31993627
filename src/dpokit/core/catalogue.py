"""One catalogue of the figures dpokit logs: each declared once, next to the code that
computes it, with its label, format and report panel. The training log's one-line summary,
``dpokit eval``'s table, the quickstart's before/after table and ``dpokit report``'s panels
all read it; none of them lists metric names of its own.

A key is as logged during training (``rewards/margins``); held-out figures carry the
``eval/`` prefix (``eval/rewards/margins``), which :func:`lookup` strips.

    >>> declare(Metric("doc/example", "an example figure", "{:.2f}", panel="examples"))
    >>> lookup("eval/doc/example").label, lookup("doc/example").show(0.5)
    ('an example figure', '0.50')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

EVAL = "eval/"


@dataclass(frozen=True)
class Metric:
    """key: as logged in training (held out: ``eval/`` + key); label: one line for tables
    (a leading two-space indent marks a variant of the line above); fmt: ``str.format`` spec;
    panel: the report plot it is drawn in (None: not plotted); headline: in the one-line
    evaluation log."""

    key: str
    label: str
    fmt: str = "{:.4f}"
    panel: str | None = None
    headline: bool = False

    def show(self, value: float) -> str:
        return self.fmt.format(value)


_CATALOGUE: dict[str, Metric] = {}
# the modules that declare figures, by name (core imports no room), imported on the first read
# so that no reader (the report, doctor, a table) imports one only for its declarations
DECLARERS = ("dpokit.core.types", "dpokit.losses", "dpokit.objectives.preference",
             "dpokit.objectives.sft", "dpokit.train.engines", "dpokit.train.metrics",
             "dpokit.eval.evaluate", "dpokit.eval.tdi", "dpokit.eval.style_regularizer",
             "dpokit.eval.images")
_loaded = False


def _declared() -> dict[str, Metric]:
    """The catalogue with every declarer's figures in it."""
    global _loaded
    if not _loaded:
        import importlib

        _loaded = True  # (a declarer importing the catalogue reads it as it is)
        try:
            for name in DECLARERS:
                importlib.import_module(name)
        except BaseException:
            _loaded = False  # a failed import is raised again at the next read, not hidden
            raise
    return _CATALOGUE


def declare(*metrics: Metric) -> None:
    """Add figures to the catalogue (a module declares what it computes, at import).
    Declaring a key again with other properties is an error: one key, one meaning."""
    for metric in metrics:
        if metric.key.startswith(EVAL):  # lookup strips it: such a figure would never show
            raise ValueError(f"metric {metric.key!r}: declare it without the {EVAL!r} prefix "
                             f"(held-out figures are looked up as {EVAL}<key>)")
        known = _CATALOGUE.get(metric.key)
        if known is not None and known != metric:
            raise ValueError(f"metric {metric.key!r} declared twice, differently: {known} vs "
                             f"{metric}")
        _CATALOGUE[metric.key] = metric


def lookup(key: str) -> Metric | None:
    """The declared figure of a logged key (training or ``eval/``), or None."""
    return _declared().get(key[len(EVAL):] if key.startswith(EVAL) else key)


def catalogue() -> list[Metric]:
    """Every declared figure, in declaration order."""
    return list(_declared().values())


def panels(keys: Iterable[str]) -> dict[str, list[str]]:
    """Report panels -> the ``keys`` (as given, in catalogue order) drawn in each."""
    given = {k[len(EVAL):] if k.startswith(EVAL) else k: k for k in keys}
    out: dict[str, list[str]] = {}
    for metric in catalogue():
        if metric.panel is not None and metric.key in given:
            out.setdefault(metric.panel, []).append(given[metric.key])
    return out


def table(figures: dict[str, float], columns: dict[str, dict[str, float]] | None = None,
          keys: Iterable[str] | None = None) -> str:
    """Declared figures present in ``figures`` as ``label  value`` lines (± the ``KEY_se``
    standard error when given); with ``columns`` (name -> figures) one value column each.
    ``keys``: which figures, in this order (default: the whole catalogue's order)."""
    chosen = [lookup(k) for k in keys] if keys is not None else catalogue()
    found = [(m, key) for m in chosen if m is not None
             for key in (m.key, EVAL + m.key) if key in figures]
    if not found:
        return ""
    width = max(len(m.label) for m, _ in found)
    lines = []
    if columns:
        lines.append(f"{'held-out figure':<{width}}  " + "  ".join(f"{c:>9}" for c in columns))
    for metric, key in found:
        if columns:
            cells = "  ".join(f"{metric.show(col[key]):>9}" for col in columns.values())
            lines.append(f"{metric.label:<{width}}  {cells}")
            continue
        se = figures.get(f"{key}_se")
        lines.append(f"{metric.label:<{width}}  {metric.show(figures[key])}"
                     + (f" ± {se:.4f}" if se is not None else ""))
    return "\n".join(lines)


def headline(figures: dict[str, float]) -> str:
    """The headline figures present, as ``name value`` pairs on one line."""
    parts = [f"{m.key} {m.show(figures[EVAL + m.key])}" for m in catalogue()
             if m.headline and EVAL + m.key in figures]
    return "  ".join(parts)
