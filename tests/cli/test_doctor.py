"""`dpokit doctor`: every health check over a finished or crashed run folder, "no findings" on
a healthy one, a one-line error on a folder that is not a run, the complete lines of a metrics
file a kill cut short; `dpokit report` shows the same findings, linked to their plots."""

from __future__ import annotations

import json

from conftest import held_out_rows
from helpers import tiny_trainer

from dpokit.cli import main


def frozen_run(folder):
    folder.mkdir()
    rows = [{"step": s, "loss": 0.6931, "learning_rate": 0.0, "grad_norm": 0.5}
            for s in range(1, 6)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "run.json").write_text(json.dumps({"objective": "sigmoid", "config": {}}))
    return folder


def test_doctor_names_the_findings_and_writes_them_as_json(tmp_path, capsys):
    run = frozen_run(tmp_path / "run")
    assert main(["doctor", str(run), "--json", str(tmp_path / "doctor.json")]) == 0
    out = capsys.readouterr().out
    assert "1 finding" in out and "[error] frozen (step 5)" in out and "try: set learning_rate" \
        in out
    record = json.loads((tmp_path / "doctor.json").read_text())
    assert [f["check"] for f in record[str(run)]["findings"]] == ["frozen"]


def test_doctor_on_a_healthy_tiny_run_says_no_findings(tmp_path, tokenizer, capsys):
    tiny_trainer(tmp_path, tokenizer, eval_rows=held_out_rows(), max_steps=4,
                 eval_every=2).train()
    assert main(["doctor", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip().endswith("no findings")


def test_doctor_reads_what_is_complete_and_refuses_a_folder_that_is_not_a_run(tmp_path,
                                                                             capsys):
    run = frozen_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # what kill -9 leaves
    assert main(["doctor", str(run)]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "line 6: incomplete" in out and "frozen" in out
    assert main(["doctor", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.jsonl or run.json" in err and "Traceback" not in err


def test_the_report_shows_the_findings_linked_to_their_plots(tmp_path):
    run = frozen_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<h2>Health</h2>" in page and "frozen</b> [error]" in page
    assert 'href="#plot-training--optimizer"' in page and 'id="plot-training--optimizer"' in page


def test_doctor_reads_the_data_the_run_names(tmp_path, capsys):
    """Prompts shared between train and eval, and a length bias, from the files in run.json
    (what `dpokit data inspect` warns of)."""
    from conftest import write_jsonl

    rows = [{"prompt": f"q{i}", "chosen": "a long and detailed answer " * 3, "rejected": "no"}
            for i in range(10)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    held = write_jsonl(tmp_path / "eval.jsonl", rows[:3])
    run = frozen_run(tmp_path / "run")
    (run / "run.json").write_text(json.dumps({"objective": "sigmoid", "config": {"data": {
        "train_data": str(train), "eval_data": str(held)}}}))
    assert main(["doctor", str(run)]) == 0
    out = capsys.readouterr().out
    assert "[error] data" in out and "3 held-out pairs are training pairs" in out
    assert "[warning] data" in out and "chosen answer is longer in 100% of pairs" in out


def test_shared_instructions_are_no_leak_even_in_a_few_training_rows(tmp_path, capsys):
    """8 training rows with 6 distinct prompts, held-out rows asking the same few
    instructions as each other: instructions shared by design (the doctor demo's over-fitting
    run); held-out questions of their own that training asks too: a leak."""
    from conftest import write_jsonl

    ask = [f"instruction {i % 6}" for i in range(8)]
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": p, "chosen": f"yes {i}", "rejected": f"no {i}"} for i, p in enumerate(ask)])
    shared = write_jsonl(tmp_path / "shared.jsonl", [
        {"prompt": f"instruction {i % 3}", "chosen": f"ok {i}", "rejected": f"bad {i}"}
        for i in range(12)])
    own = write_jsonl(tmp_path / "own.jsonl", [
        {"prompt": f"instruction {i}", "chosen": f"ok {i}", "rejected": f"bad {i}"}
        for i in range(4)])
    for held, leak in ((shared, False), (own, True)):
        run = frozen_run(tmp_path / f"run-{leak}")
        (run / "run.json").write_text(json.dumps({"objective": "sigmoid", "config": {"data": {
            "train_data": str(train), "eval_data": str(held)}}}))
        assert main(["doctor", str(run)]) == 0
        out = capsys.readouterr().out
        assert ("ask a prompt that training asks too" in out) == leak, out
