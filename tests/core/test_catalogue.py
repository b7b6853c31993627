"""The metric catalogue: one meaning per key, and every figure a run logs declared in it (so
the log line, `dpokit eval`'s table and the report's panels can read it)."""

from __future__ import annotations

import pytest
from helpers import tiny_trainer

from dpokit.core.catalogue import Metric, catalogue, declare, headline, lookup, panels, table


def test_one_key_one_meaning():
    declare(Metric("test/once", "a figure", "{:.1f}"))
    declare(Metric("test/once", "a figure", "{:.1f}"))  # the same declaration again: fine
    with pytest.raises(ValueError, match="declared twice"):
        declare(Metric("test/once", "another meaning", "{:.1f}"))


def test_tables_panels_and_headline_read_the_declarations():
    declare(Metric("test/acc", "held-out accuracy", "{:.2f}", "accuracy", headline=True))
    figures = {"eval/test/acc": 0.5, "eval/test/acc_se": 0.1, "eval/unknown": 1.0}
    shown = table(figures, keys=["eval/test/acc", "eval/unknown"])
    assert shown.split() == ["held-out", "accuracy", "0.50", "±", "0.1000"]  # only declared
    assert table({"eval/test/acc": 0.75}, {"before": {"eval/test/acc": 0.5},
                                            "after": {"eval/test/acc": 0.75}},
                 ["eval/test/acc"]).splitlines()[1].split() == ["held-out", "accuracy",
                                                               "0.50", "0.75"]
    assert panels(["eval/test/acc", "step"]) == {"accuracy": ["eval/test/acc"]}
    assert "test/acc 0.50" in headline(figures)
    assert lookup("eval/test/acc") is lookup("test/acc")


def test_every_figure_a_run_logs_is_declared(tmp_path, tokenizer):
    from conftest import held_out_rows

    trainer = tiny_trainer(tmp_path, tokenizer, eval_rows=held_out_rows(), max_steps=2,
                           eval_every=1)
    result = trainer.train()
    logged = {k for row in result.history + result.eval_history for k, v in row.items()
              if isinstance(v, float) and k != "step"}
    assert {"loss", "rewards/accuracies", "eval/loss", "grad_norm"} <= logged
    undeclared = sorted(k for k in logged if lookup(k) is None)
    assert not undeclared, f"logged but not in the catalogue: {undeclared}"
    assert len(catalogue()) > 20


def test_image_figures_are_found_and_headlined_and_an_eval_prefix_is_refused():
    """eval/images.py declared its keys with the eval/ prefix that lookup strips, so its
    headline (the reward of own samples) never showed."""
    import dpokit.eval.images  # noqa: F401 (its declarations)

    assert lookup("eval/img/reward").label == "reward of own samples"
    assert lookup("eval/img/diversity") is not None
    assert headline({"eval/img/reward": 0.25, "step": 3}) == "img/reward +0.2500"
    with pytest.raises(ValueError, match="without the 'eval/' prefix"):
        declare(Metric("eval/new/figure", "a figure"))
    assert all(not m.key.startswith("eval/") for m in catalogue())


def test_a_reader_finds_every_declared_figure_without_importing_its_declarer():
    """The catalogue loads its declarers itself (DECLARERS): the report and doctor import no
    module only for the figures it declares. In a fresh process, so nothing is loaded yet."""
    import subprocess
    import sys

    code = ("import sys; from dpokit.core.catalogue import lookup; "
            "print(lookup('eval/img/reward').label, '|', lookup('stat/bco_delta').label, '|', "
            "lookup('eval/geometry/style_tdi') is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "reward of own samples | BCO: running mean δ of the rewards | True", out
