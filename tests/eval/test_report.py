"""The report's panels: quantities of different scales never share an axis, training curves
carry a smoothed line over the raw one, and the page renders in a real browser."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest
from conftest import write_jsonl

from dpokit.eval.report import ema, scale_groups, write_report


def test_ema_is_tensorboards_debiased_average():
    """Hand-derived: w = 0.6; s1 = 0.4 * 2 / (1 - 0.6) = 2; s2 = (0.6 * 0.8 + 0.4 * 4) /
    (1 - 0.36) = 3.25."""
    assert ema([2.0, 4.0]) == pytest.approx([2.0, 3.25])
    assert ema([5.0] * 20) == pytest.approx([5.0] * 20)  # a flat curve stays flat
    assert ema([]) == []


def test_scale_groups_split_what_a_shared_axis_would_flatten():
    assert scale_groups({"learning_rate": [1e-3], "grad_norm": [2.0]}) == [["grad_norm"],
                                                                          ["learning_rate"]]
    assert scale_groups({"tokens_per_s": [900.0], "examples_per_s": [4.0]}) == [
        ["tokens_per_s"], ["examples_per_s"]]
    assert scale_groups({"logps/chosen": [-122.0], "logps/rejected": [-142.0]}) == [
        ["logps/chosen", "logps/rejected"]]  # one scale: one axis
    assert scale_groups({"a": [10.0], "b": [1.0]}) == [["a", "b"]]  # exactly 10x: shared
    assert scale_groups({"a": [10.0], "b": [0.99]}) == [["a"], ["b"]]
    assert scale_groups({"m": [1.5], "zero": [0.0]}) == [["m", "zero"]]


def _run(folder, steps=30):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "loss": 0.69 - 0.01 * s + 0.02 * math.sin(s),
             "grad_norm": 2.0 + math.cos(s),
             "learning_rate": 1e-3 * min(s / 5, (steps - s) / (steps - 5))}
            for s in range(1, steps + 1)]
    rows += [{"step": s, "eval/loss": 0.69 - 0.005 * s, "eval/rewards/margins": 0.05 * s}
             for s in (0, steps)]
    write_jsonl(folder / "metrics.jsonl", rows)
    return folder


def test_a_panel_gets_an_axis_per_scale_and_a_smoothed_training_line(tmp_path, monkeypatch):
    """learning_rate beside grad_norm (the "optimizer" panel) draws on two stacked axes; a
    noisy training curve of 30 points is drawn twice, raw (faint) and its EMA, the learning
    rate (a schedule: warmup then decay) once, as it is."""
    import matplotlib.figure

    drawn = {}
    save = matplotlib.figure.Figure.savefig

    def record(fig, path, **kw):
        drawn[str(path)] = [[(line.get_label(), line.get_alpha()) for line in ax.get_lines()]
                            for ax in fig.axes]
        return save(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    write_report([_run(tmp_path / "run")], tmp_path / "run" / "report.html", log=lambda _: None)
    optimizer = next(axes for axes in drawn.values()
                     if any("learning_rate" in label for ax in axes for label, _ in ax))
    assert len(optimizer) == 2  # grad_norm ~2 and learning_rate ~1e-3: an axis each
    grad_norm, learning_rate = optimizer
    assert [label for label, _ in grad_norm if not label.startswith("_")] == [
        "grad_norm (EMA 0.6)"] and any(alpha == 0.25 for _, alpha in grad_norm)  # raw, faint
    assert [label for label, _ in learning_rate] == ["learning_rate"]
    held = [axes for axes in drawn.values() if any("eval/loss" in label for ax in axes
                                                   for label, _ in ax)]
    assert held and all("EMA" not in label for ax in held[0] for label, _ in ax)


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_the_page_renders_in_headless_chromium(tmp_path):
    """The documented check (docs/evaluation.md): a headless Chromium screenshot of the page
    shows its plots (many colours where the images are), not a blank or broken page."""
    from PIL import Image

    page = write_report([_run(tmp_path / "run")], tmp_path / "report.html", log=lambda _: None)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1300,2400",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    colours = len(set(image.resize((325, 600)).getdata()))
    assert colours > 200, colours  # text alone renders a few dozen; plots add hundreds
