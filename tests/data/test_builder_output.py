"""What the pair builders write and report (tools/mutate.py found these unpinned): JSON Lines
with the text as it is (UTF-8, not escaped), Parquet by the extension, any other extension
refused; the report counts from 0 and names the biggest drop first."""

from __future__ import annotations

import json

import pytest

from dpokit.data.builders.common import BuildReport, write_rows

ROWS = [{"prompt": "¿qué?", "chosen": "naïve café", "rejected": "日本"}]


def test_json_lines_keep_the_text_as_it_is(tmp_path):
    path = write_rows(ROWS, tmp_path / "pairs.jsonl")
    raw = path.read_bytes()
    assert "naïve café".encode() in raw and b"\\u" not in raw
    assert [json.loads(line) for line in raw.decode("utf-8").splitlines()] == ROWS


def test_parquet_by_the_extension_and_other_extensions_refused(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    path = write_rows(ROWS, tmp_path / "pairs.parquet")
    assert pq.read_table(path).to_pylist() == ROWS
    with pytest.raises(ValueError, match="write .jsonl or .parquet"):
        write_rows(ROWS, tmp_path / "pairs.json")


def test_the_report_counts_from_zero_and_names_the_biggest_drop_first():
    report = BuildReport()
    assert report.kept == 0 and report.summary() == "0 pairs written"
    report.drop("tie", 2)
    report.drop("deleted", 5)
    report.drop("none", 0)
    report.kept += 3
    assert report.summary() == "3 pairs written; dropped: 5 deleted, 2 tie"


def test_the_mean_reward_of_the_scored_samples():
    from dpokit.data.builders.sample import ScoredSamples
    from dpokit.data.builders.scored import ScoredGroup

    groups = [ScoredGroup("a", "p", [("x", 1.0), ("y", 2.0)]),
              ScoredGroup("b", "q", [("z", 6.0), ("w", None)])]  # an unscored sample left out
    assert ScoredSamples(groups, [[True, True], [True, False]]).mean_reward() == 3.0
    assert ScoredSamples([], []).mean_reward() == 0.0


def test_prompt_rows_read_prompts_references_and_ids():
    from dpokit.data.builders.sample import PromptRow, SampleText, prompt_rows
    from dpokit.data.io import DataError

    rows = prompt_rows([{"prompt": "p1", "reference": "r1", "prompt_id": "a"},
                        {"prompt": "p2", "chosen": "c2"}, {"prompt": "p3", "prompt_id": None}])
    assert [(r.prompt, r.reference, r.prompt_id) for r in rows] == [
        ("p1", "r1", "a"), ("p2", "c2", ""), ("p3", None, "")]
    assert rows[0].id == "a" and rows[1].id and rows[1].id != rows[2].id  # from the prompt
    with pytest.raises(DataError, match="prompt"):
        prompt_rows([{"question": "no prompt"}])
    assert SampleText("x").finished is True
    with pytest.raises(AttributeError):
        PromptRow("p").prompt = "q"  # records, frozen
