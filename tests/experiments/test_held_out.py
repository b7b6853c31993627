"""The experiments' held-out check (experiments/common.py) and the three scripts that got it
last: an overlap stops a script before it trains; the record lands in its results files."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
common = importlib.import_module("common")


def test_an_overlap_stops_unless_stated():
    with pytest.raises(common.Overlap, match=r"1 of 2 evaluation prompts .*e\.g\. b"):
        common.check_disjoint("prompts", ["a", "b"], ["b", "c"])
    record = common.check_disjoint("prompts", ["a", "b"], ["b"], allowed="the point")
    assert (record["overlap"], record["examples"], record["allowed"]) == (1, ["b"], "the point")
    assert common.disjointness_line([record]) == (
        "Held out (checked in the script): 1 of 2 evaluation prompts in the training data (1), "
        "by design: the point.")


def test_run_or_replot_checks_before_computing(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "results_dir", lambda: tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    computed = []

    def compute():
        computed.append(1)
        return {"figure": 1}

    def overlapping():
        return [common.check_disjoint("users", [1], [1])]

    with pytest.raises(common.Overlap):
        common.run_or_replot("exp", compute, overlapping)
    assert computed == []  # stopped before training
    data = common.run_or_replot("exp", compute, lambda: [common.check_disjoint("users", [1], [2])])
    assert data["disjointness"][0]["overlap"] == 0
    assert json.loads((tmp_path / "exp.json").read_text()) == data


def test_stamp_replaces_or_inserts_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "results_dir", lambda: tmp_path)
    (tmp_path / "exp.md").write_text("# title\n\nintro\n\n| a |\n")
    (tmp_path / "exp.json").write_text("[1, 2]")
    records = [common.check_disjoint("prompts", ["a"], ["b"])]
    common.stamp_disjointness("exp", records)
    common.stamp_disjointness("exp", records)  # again: replaced, not doubled
    md = (tmp_path / "exp.md").read_text()
    assert md.count("Held out (checked in the script)") == 1
    assert md.index("intro") < md.index("Held out") < md.index("| a |")
    assert json.loads((tmp_path / "exp.json").read_text()) == {"results": [1, 2],
                                                               "disjointness": records}


@pytest.mark.parametrize("script", ["frontier", "pairs_chain", "doctor"])
def test_shipped_data_is_held_out(script):
    records = importlib.import_module(script).held_out()
    assert records and all(r["overlap"] == 0 and r["evaluated"] > 0 and r["trained"] > 0
                           for r in records)


def test_gw_dpo_arms_rows_and_their_held_out_check():
    gw = importlib.import_module("gw_dpo")
    assert all(r["overlap"] == 0 for r in gw.disjointness())
    tokens = gw.rows_of("tokens", "eval")
    assert all("[" not in m["content"].split(" ", 1)[0] for r in tokens for m in r["prompt"])
    assert "<|level_2|> Task:" in tokens[0]["prompt"][-1]["content"]
    three = gw.rows_of("3 levels", "eval")
    assert {r["level_overridden"] for r in three} == {0, 1, 2}
    conflicts = [r for r in three if r["kind"] == "conflict"]
    five = [r for r in gw.rows_of("text", "eval") if r["kind"] == "conflict"
            and r["level_overridden"] < 3]
    assert conflicts == five  # the ablation's cells: the same conflicts as the 5-level set
