"""``dpokit report RUN_DIR [RUN_DIR ...]``: one self-contained HTML page per run or comparison.

Training curves, held-out figures over steps (the objective's, the generation figures and the
embedding-geometry trajectory: Style TDI and trajectory TDI),
the last evaluation's figures side by side, and sample answers from the first and last
evaluations; the PNG plots are written next to the page and embedded in it (base64), so the
page can be mailed alone.

    >>> write_report(["outputs/run-a", "outputs/run-b"], "compare.html")   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.catalogue import lookup, panels
from ..core.paths import write_text_atomic
from ..train.health import RunTrace, load_trace, run_checks


@dataclass
class RunData:
    """A run folder as the page shows it: its trace (the complete metric rows, split into
    training and evaluation rows; the loss and checkpoints the health checks read) and card."""

    name: str
    path: Path
    trace: RunTrace
    skipped: list[str] = field(default_factory=list)  # incomplete lines of metrics.jsonl
    card: str = ""

    @property
    def train(self) -> list[dict[str, Any]]:
        return self.trace.train

    @property
    def evals(self) -> list[dict[str, Any]]:
        return self.trace.evals


def load_run(path: str | Path) -> RunData:
    """A run folder's ``metrics.jsonl`` (its complete training and evaluation rows; an
    incomplete line, as a killed run leaves, is skipped and named), run record and model
    card."""
    path = Path(path)
    if not (path / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is it a dpokit run folder?)")
    trace, skipped = load_trace(path)
    card = path / "final" / "README.md"
    return RunData(path.name or str(path), path, trace, skipped,
                   card.read_text() if card.is_file() else "")


def ema(values: list[float], weight: float = 0.6) -> list[float]:
    """The exponential moving average TensorBoard draws over a raw curve (its default weight,
    debiased so that the first points are not pulled towards 0).

    >>> [round(v, 3) for v in ema([1.0, 0.0, 0.0])]
    [1.0, 0.375, 0.184]
    """
    out, last = [], 0.0
    for i, v in enumerate(values, start=1):
        last = weight * last + (1 - weight) * v
        out.append(last / (1 - weight**i))
    return out


def scale_groups(series: dict[str, list[float]], ratio: float = 10.0) -> list[list[str]]:
    """Keys grouped so that one axis shows each group: a key joins a group when its largest
    magnitude is within ``ratio`` of the group's (a learning rate of 1e-3 and a gradient norm
    of 2 get an axis each; chosen and rejected log-probs share one); a key that is 0 throughout
    joins the first group.

    >>> scale_groups({"grad_norm": [2.0, 1.5], "learning_rate": [1e-3, 5e-4], "loss": [0.7]})
    [['grad_norm', 'loss'], ['learning_rate']]
    """
    size = {k: max((abs(v) for v in vs), default=0.0) for k, vs in series.items()}
    groups: list[list[str]] = []
    for key in sorted(series, key=lambda k: -size[k]):
        home = next((g for g in groups if size[key] == 0 or size[g[0]] / size[key] <= ratio),
                    None)
        home.append(key) if home is not None else groups.append([key])
    return [sorted(g, key=list(series).index) for g in groups]


SMOOTH_FROM = 10  # noisy training curves with at least this many points get a smoothed line


def noisy(ys) -> bool:
    """Whether a curve goes up and down more than a schedule does: its total variation is over
    3x its range (a warmup-then-decay learning rate: 2x; a loss measured per batch: 10x and
    more). A schedule is drawn as it is; smoothing it would only make it lag.

    >>> noisy([0.0, 1.0, 0.5, 0.0]), noisy([0.0, 1.0, 0.0, 1.0, 0.0])
    (False, True)
    """
    variation = sum(abs(b - a) for a, b in zip(ys, ys[1:], strict=False))
    return variation > 3 * (max(ys) - min(ys)) > 0


def _plot(runs: list[RunData], rows_of: str, keys: list[str], title: str, out: Path
          ) -> Path | None:
    """One PNG per panel: an axis per scale group (:func:`scale_groups`), stacked; noisy
    training curves (:func:`noisy`) drawn raw (faint) under their moving average
    (:func:`ema`), a schedule as it is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(run, key, run.trace.series(key)) for run in runs for key in keys]
    series = [s for s in series if s[2]]
    if not series:
        return None
    groups = scale_groups({k: [v for _, key, pts in series if key == k for _, v in pts]
                           for k in dict.fromkeys(key for _, key, _ in series)})
    fig, axes = plt.subplots(len(groups), 1, figsize=(6, 1.2 + 2.0 * len(groups)), sharex=True,
                             squeeze=False)
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 8)
    for ax, group in zip(axes[:, 0], groups, strict=True):
        for run, key, points in (s for s in series if s[1] in group):
            label = key if len(runs) == 1 else f"{run.name}: {key}"
            xs, ys = zip(*points, strict=True)
            color = next(colors)
            if rows_of == "train" and len(points) >= SMOOTH_FROM and noisy(ys):
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
                ax.plot(xs, ema(list(ys)), color=color, label=f"{label} (EMA 0.6)")
            else:
                ax.plot(xs, ys, color=color, marker="o" if len(points) < 12 else None,
                        markersize=3, label=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(title, fontsize=10)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _table(runs: list[RunData]) -> str:
    last = [run.evals[-1] if run.evals else {} for run in runs]
    first = [run.evals[0] if run.evals else {} for run in runs]
    keys = sorted({k for row in last for k, v in row.items()
                   if k.startswith("eval/") and isinstance(v, int | float)})
    if not keys:
        return "<p>No evaluation rows.</p>"
    head = "".join(f"<th>{html.escape(r.name)}: first</th><th>last</th>" for r in runs)
    body = []
    for k in keys:
        m = lookup(k)
        cells = "".join(f"<td>{_fmt(f.get(k), m)}</td><td>{_fmt(x.get(k), m)}</td>"
                        for f, x in zip(first, last, strict=True))
        name = html.escape(m.label.strip() if m else k)
        body.append(f'<tr><td title="{html.escape(k)}">{name}</td>{cells}</tr>')
    steps = "".join(f"<td>{_fmt(f.get('step'))}</td><td>{_fmt(x.get('step'))}</td>"
                    for f, x in zip(first, last, strict=True))
    return (f"<table><tr><th>figure</th>{head}</tr><tr><td>step</td>{steps}</tr>"
            + "".join(body) + "</table>")


def _anchor(title: str) -> str:
    return "plot-" + "".join(c if c.isalnum() else "-" for c in title).lower()


def _findings(runs: list[RunData]) -> str:
    """The health checks' findings (``dpokit doctor``'s), each linked to the plot that shows
    its evidence."""
    items = []
    for run in runs:
        for f in run_checks(run.trace):
            link = (f' (<a href="#{_anchor(f.panel)}">{html.escape(f.panel)}</a>)'
                    if f.panel else "")
            items.append(f"<li><b>{html.escape(run.name)}: {f.check}</b> [{f.severity}]{link}: "
                         f"{html.escape(f.finding)} <i>Try: {html.escape(f.remedy)}</i></li>")
    return f"<ul>{''.join(items)}</ul>" if items else "<p>No findings.</p>"


def _fmt(value: Any, metric=None) -> str:
    if isinstance(value, float):
        return metric.show(value) if metric is not None else f"{value:.4g}"
    return "" if value is None else html.escape(str(value))


def _samples(runs: list[RunData]) -> str:
    parts = []
    for run in runs:
        with_samples = [r for r in run.evals if r.get("eval/gen/samples")]
        if not with_samples:
            continue
        for label, row in (("first evaluation", with_samples[0]),
                           ("last evaluation", with_samples[-1])):
            items = "".join(f"<li><i>{html.escape(str(s['prompt']))}</i> &rarr; "
                            f"{html.escape(s['sample'])}</li>"
                            for s in row["eval/gen/samples"][:4])
            parts.append(f"<h3>{html.escape(run.name)}, {label} (step {row['step']})</h3>"
                         f"<ul>{items}</ul>")
    return "".join(parts) or "<p>No sample answers (set run.eval_prompts).</p>"


def write_report(run_dirs: list[str | Path], out: str | Path, log=print) -> Path:
    """Write the HTML page (and its PNGs in ``<out stem>_files/``), atomically; a failure
    leaves no folder behind. Incomplete lines of a metrics file are skipped and logged."""
    from ..core.packages import need

    need("matplotlib", "data", "dpokit report")  # before any folder is made
    runs = [load_run(d) for d in run_dirs]
    for run in runs:
        for skipped in run.skipped:
            log(f"skipped {skipped}")
    out = Path(out)
    figures = out.parent / f"{out.stem}_files"
    made = not figures.exists()
    figures.mkdir(parents=True, exist_ok=True)
    try:
        return _write_page(runs, out, figures)
    except BaseException:
        if made:
            shutil.rmtree(figures, ignore_errors=True)
        raise


def _write_page(runs: list[RunData], out: Path, figures: Path) -> Path:
    images = []
    for rows_of, section in (("train", "training"), ("evals", "held out")):
        keys = {k for run in runs for row in getattr(run, rows_of) for k in row}
        for i, (panel, panel_keys) in enumerate(panels(keys).items()):  # the catalogue's
            title = f"{section}: {panel}"
            png = _plot(runs, rows_of, panel_keys, title, figures / f"{rows_of}_{i}.png")
            if png is not None:
                data = base64.b64encode(png.read_bytes()).decode()
                images.append(f'<img id="{_anchor(title)}" alt="{html.escape(title)}" '
                              f'src="data:image/png;base64,{data}">')
    cards = "".join(f"<details><summary>{html.escape(r.name)}: model card</summary>"
                    f"<pre>{html.escape(r.card)}</pre></details>" for r in runs if r.card)
    names = ", ".join(html.escape(r.name) for r in runs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>dpokit: {names}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:auto}}
img{{margin:4px;vertical-align:top}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
</style></head><body><h1>dpokit report: {names}</h1>
<p>{" ".join(f"{html.escape(str(r.path))}: {len(r.train)} training rows, {len(r.evals)} "
             f"evaluations." for r in runs)}</p>
<h2>Health</h2>{_findings(runs)}
<h2>Curves</h2>{"".join(images)}
<h2>Held-out figures (first and last evaluation)</h2>{_table(runs)}
<h2>Sample answers</h2>{_samples(runs)}
<h2>Configuration</h2>{cards or "<p>No model card (final/README.md).</p>"}
</body></html>"""
    return write_text_atomic(out, page)
