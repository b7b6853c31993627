"""Every command keeps the training command's promise: the user's input is never destroyed,
nonsense is refused before any work, every failure is one clear line (exit code 2) naming what
to do, and what can be checked is checked before a model loads."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_jsonl

from dpokit.cli import build_parser, main
from dpokit.cli.extensions import load_extensions

PAIR_KINDS = ["votes", "scored", "sample", "failures", "injection", "llumi"]
EXTRA = {"llumi": ["--model", "generation", "--stage", "sft"]}


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_pairs_refuse_an_output_that_is_an_input(tmp_path, capsys, kind):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    before = rows.read_text()
    link = tmp_path / "link.jsonl"
    link.symlink_to(rows)
    for out in (rows, link):  # the same file, also through a link
        assert main(["pairs", kind, str(rows), "--out", str(out), *EXTRA.get(kind, [])]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is the input" in err and "destroy" in err
    assert rows.read_text() == before


def test_data_split_refuses_to_write_over_its_input(tmp_path, capsys):
    rows = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(6))
    before = rows.read_text()
    for option in ("--train-out", "--eval-out"):
        assert main(["data", "split", str(rows), option, str(rows)]) == 2
        assert "is the input" in capsys.readouterr().err
    assert main(["data", "split", str(rows), "--train-out", str(tmp_path / "x.jsonl"),
                 "--eval-out", str(tmp_path / "x.jsonl")]) == 2
    assert "another output" in capsys.readouterr().err
    assert rows.read_text() == before


def test_eval_and_report_refuse_to_write_over_their_inputs(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(2))
    assert main(["eval", "smollm2", "--pairs", str(pairs), "--json", str(pairs)]) == 2
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    assert main(["report", str(run), "--out", str(run / "metrics.jsonl")]) == 2
    assert capsys.readouterr().err.count("is the input") == 2
    assert json.loads((run / "metrics.jsonl").read_text()) == {"step": 1, "loss": 0.5}


def _numeric_options():
    """(argv before the option, option, domain) for every numeric option of every command."""
    positional = {"pairs": lambda kind: ["pairs", kind, "in.jsonl", "--out", "out.jsonl",
                                         *EXTRA.get(kind, [])],
                  "data": lambda action: ["data", action, "in.jsonl"],
                  "eval": lambda _: ["eval", "model"], "harness": lambda _: ["harness", "m"]}
    found = []

    def walk(parser, path):
        for action in parser._actions:
            if action.choices and isinstance(action.choices, dict):  # subcommands
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.option_strings and action.type in (int, float):
                raise AssertionError(f"dpokit {' '.join(path)} {action.option_strings[0]}: a "
                                     f"numeric option without a declared domain")
            elif action.option_strings and hasattr(action.type, "domain"):
                argv = positional[path[0]](path[1] if len(path) > 1 else None)
                found.append((argv, action.option_strings[-1], action.type.domain))

    walk(build_parser(load_extensions()), [])
    return found


NUMERIC = _numeric_options()


def test_every_numeric_option_of_every_command_declares_its_domain():
    options = {(argv[0], option) for argv, option, _ in NUMERIC}
    assert len(NUMERIC) > 40
    assert {("pairs", "--min-ratio"), ("pairs", "--temperature"), ("pairs", "--num-samples"),
            ("data", "--eval-fraction"), ("eval", "--beta"), ("harness", "--limit")} <= options


@pytest.mark.parametrize("argv,option,domain", [n for n in NUMERIC if math.isfinite(
    n[2].low) or math.isfinite(n[2].high)], ids=lambda v: v if isinstance(v, str) else None)
def test_a_value_outside_its_domain_is_one_line_before_any_work(capsys, argv, option, domain):
    bad = domain.low - 1 if math.isfinite(domain.low) else domain.high + 1
    assert main([*argv, option, str(int(bad) if bad == int(bad) else bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpokit: error: ") and err.count("\n") == 1
    assert option in err and domain.describe() in err


def test_a_misspelled_recipe_names_the_nearest_shipped_one(capsys):
    assert main(["train", "quickstrat"]) == 2
    assert "did you mean 'quickstart'?" in capsys.readouterr().err


def test_a_corrupt_or_missing_model_is_named_by_its_file(tmp_path, tiny_model_dir, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(2))
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])  # cut short
    assert main(["eval", str(broken), "--pairs", str(pairs)]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated weights file" in err
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert main(["eval", str(broken), "--pairs", str(pairs)]) == 2
    assert "header is not valid JSON" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty), "--pairs", str(pairs)]) == 2
    assert "is not a model folder: no config.json" in capsys.readouterr().err


def test_a_missing_optional_package_names_its_install_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "dpokit report needs the package 'matplotlib'" in err
    assert "pip install 'dpokit[data]'" in err
    assert not (run / "report_files").exists()  # nothing left behind


def test_deepspeed_missing_is_named_with_its_extra(tmp_path, tokenizer, monkeypatch):
    from helpers import tiny_trainer

    from dpokit.core.packages import MissingPackage

    monkeypatch.setitem(sys.modules, "deepspeed", None)
    environ = dict(os.environ)  # the launch settings a distributed start writes
    try:
        with pytest.raises(MissingPackage, match=r"pip install 'dpokit\[deepspeed\]'"):
            tiny_trainer(tmp_path, tokenizer, strategy="deepspeed")
    finally:
        os.environ.clear()
        os.environ.update(environ)


def test_report_reads_the_complete_lines_of_a_killed_runs_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.6}\n{"step": 2, "loss": 0.5}\n'
                                       '{"step": 3, "lo')  # what kill -9 leaves
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "line 3: incomplete" in out
    assert (run / "report.html").is_file()


def test_a_failing_report_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    from dpokit.eval import report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "_plot", broken)
    assert main(["report", str(run)]) == 2
    assert not (run / "report_files").exists() and not (run / "report.html").exists()


@pytest.fixture
def corrupt_model_dir(tmp_path, tiny_model_dir):
    """A model folder whose weights file is corrupt: any command that touches the weights
    (the header check or the loader) before naming a missing file fails the promise."""
    folder = tmp_path / "corrupt-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"not a weights file" * 8)
    return folder


def _named_first(argv, capsys, missing="missing.jsonl"):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert missing in err and "safetensors" not in err, (argv, err)


FILE_SETTINGS = [["train_data={missing}"], ["eval_data={missing}"], ["eval_prompts={missing}"],
                 ["geometry.probes={missing}"]]
RUN_KINDS = [*(("train", e) for e in FILE_SETTINGS), *(("sft", e) for e in FILE_SETTINGS),
             ("train", ["streaming=true", "train_data={missing}"]),
             ("train", ["online.mode=online", "online.prompts={missing}", "max_steps=1"]),
             ("train", ["online.mode=iterative", "online.prompts={missing}"])]


@pytest.mark.parametrize(("command", "extra"), RUN_KINDS)
def test_every_named_file_is_checked_before_any_weights(tmp_path, corrupt_model_dir, capsys,
                                                        command, extra):
    """The issue's case and every run kind: a missing file is named before the corrupt
    weights are (the weights file is checked when the tokenizer loads, so a file read after
    that would be reported second)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    missing = tmp_path / "missing.jsonl"
    _named_first([command, f"model={corrupt_model_dir}", f"train_data={data}", "lora=false",
                  f"output_dir={tmp_path / 'out'}", "progress_bar=false", "log_with=[]",
                  *(e.format(missing=missing) for e in extra)], capsys)


def test_eval_and_pairs_sample_name_their_files_before_any_weights(tmp_path, corrupt_model_dir,
                                                                  capsys):
    missing = str(tmp_path / "missing.jsonl")
    for flag in ("--pairs", "--prompts", "--probes"):
        _named_first(["eval", str(corrupt_model_dir), flag, missing], capsys)
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "p"}])
    _named_first(["eval", str(corrupt_model_dir), "--prompts", str(data), "--judge",
                  "openai:http://localhost:9/v1#m", "--judge-template", "missing.txt"],
                 capsys, "missing.txt")
    assert main(["eval", str(corrupt_model_dir), "--prompts", str(data), "--judge-template",
                 "t.txt"]) == 2  # a template without an LLM judge would be silently unused
    assert "only an LLM judge reads a template" in capsys.readouterr().err
    _named_first(["pairs", "sample", missing, "--out", str(tmp_path / "o.jsonl"), "--model",
                  str(corrupt_model_dir), "--reward", "vader"], capsys)


def test_streaming_names_json_lines_before_anything_loads(tmp_path, capsys):
    data = tmp_path / "pairs.csv"
    data.write_text("prompt,chosen,rejected\np,a,b\n")
    assert main(["train", "streaming=true", f"train_data={data}", "max_steps=1"]) == 2
    assert "streaming reads JSON Lines" in capsys.readouterr().err


def test_scores_with_forum_suffixes_and_scores_that_are_not_numbers(tmp_path, capsys):
    rows = [{"prompt": "p", "response": "a great answer", "score": "1.2k"},
            {"prompt": "p", "response": "a fine answer", "score": "3"},
            {"prompt": "p", "response": "another answer", "score": "lots"}]
    data = write_jsonl(tmp_path / "rated.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", "scored", str(data), "--out", str(out)]) == 0
    [pair] = [json.loads(line) for line in out.read_text().splitlines()]
    assert pair["score_chosen"] == 1200.0 and pair["score_rejected"] == 3.0
    report = json.loads((tmp_path / "pairs.jsonl.report.json").read_text())
    assert report["dropped"] == {"response: score is not a number": 1}


def test_a_leftover_tmp_of_an_interrupted_write_is_replaced(tmp_path):
    from dpokit.data.builders import write_rows

    out = tmp_path / "pairs.jsonl"
    (tmp_path / "pairs.jsonl.tmp").write_text("half a row from a killed wri")
    write_rows([{"a": 1}], out)
    assert out.read_text() == '{"a": 1}\n' and not (tmp_path / "pairs.jsonl.tmp").exists()


def test_a_reader_that_leaves_early_is_not_an_error():
    """`dpokit losses | head -1`: the pipe closes after one line; no error line, exit 0."""
    import subprocess

    proc = subprocess.run(f"{sys.executable} -m dpokit.cli losses | head -1", shell=True,
                          capture_output=True, text=True, executable="/bin/bash",
                          env=dict(os.environ, PYTHONUNBUFFERED="0"))
    assert proc.stdout.count("\n") == 1 and "error" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("builder", ["diffusion", "vision_language"])
def test_image_runs_name_their_files_before_the_model(tmp_path, monkeypatch, builder):
    """The image builders check the named files before the pipeline or the image-text model
    (its config included) is read."""
    import importlib

    from dpokit.config import load_config
    from dpokit.data.io import DataError

    module = importlib.import_module(f"dpokit.runs.{builder}")
    loader = "load_pipeline" if builder == "diffusion" else "model_config"

    def no_model(*args, **kwargs):
        raise AssertionError("the model was read before the files were checked")

    monkeypatch.setattr(module, loader, no_model)
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    cfg = load_config(None, [f"train_data={data}", f"eval_data={tmp_path / 'missing.jsonl'}",
                             "lora=false", "precompute_ref_logps=false",
                             f"output_dir={tmp_path / 'out'}"])
    build = module.build_diffusion_run if builder == "diffusion" else module.build_vision_run
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        build(cfg)


def test_quickstart_records_its_baseline_at_step_0_and_report_draws_both(tmp_path,
                                                                        tiny_model_dir, capsys):
    """The quickstart's "before" column is the step-0 row of metrics.jsonl (it was printed and
    never recorded), so the report and doctor see a first and a last evaluation."""
    out = tmp_path / "qs"
    assert main(["quickstart", f"model={tiny_model_dir}", "lora=false", "max_steps=2",
                 "mixed_precision=no", f"output_dir={out}", "progress_bar=false",
                 "log_with=[]"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert evals[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert f"{evals[0]['eval/loss']:.4f}" in printed
    # at step 0 every margin is 0: ties, counted half (the no-skill level the page names);
    # TRL's strict count (0) is shown beside it because it differs there
    assert evals[0]["eval/rewards/accuracies"] == 0.5
    accuracy = next(x for x in printed.splitlines() if x.startswith("implicit-reward accuracy"))
    strict = next(x for x in printed.splitlines() if "TRL's count" in x)
    assert accuracy.split()[-2] == "0.500" and strict.split()[-2] == "0.000", printed
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "2 evaluations" in page
    assert main(["quickstart", f"model={tiny_model_dir}", "eval_before=false",
                 f"output_dir={out}"]) == 2
    assert "keep eval_before=true" in capsys.readouterr().err


def test_dpokit_sft_with_only_max_length_runs_and_says_what_followed(tmp_path, tiny_model_dir,
                                                                     capsys):
    """The issue's case: `dpokit sft max_length=64` was refused over a default it never set."""
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]}
                                                for r in sentiment_rows(1)])
    assert main(["sft", f"model={tiny_model_dir}", f"train_data={data}", "max_length=64",
                 "lora=false", "max_steps=1", "mixed_precision=no", "progress_bar=false",
                 "log_with=[]", f"output_dir={tmp_path / 'out'}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "config: max_prompt_length=32 (half of max_length=64)"


class _Payload:
    """What a hostile checkpoint could hold: unpickling it would run code (here: write a
    file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt", "objective.pt"])
def test_a_pickle_planted_in_a_checkpoint_is_refused_without_running(tmp_path, tiny_model_dir,
                                                                     capsys, name):
    """Everything dpokit saves loads with weights_only=True: a checkpoint from someone else,
    its checksums rewritten to match, is refused with one line, and its code never runs."""
    import hashlib

    import torch

    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    common = ["train", f"model={tiny_model_dir}", f"train_data={data}", "lora=false",
              f"output_dir={tmp_path / 'out'}", "progress_bar=false", "log_with=[]",
              "mixed_precision=no", "batch_size=2", "save_every=1", "max_steps=2"]
    assert main(common) == 0
    checkpoint = sorted((tmp_path / "out" / "checkpoints").glob("step-*"))[-1]
    marker = tmp_path / "pwned.txt"
    torch.save({"state": _Payload(marker)}, checkpoint / name)
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main([*common, "resume=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name}: refused" in err, err
    assert not marker.exists()


def test_a_resumed_quickstart_compares_with_the_step_0_row_of_its_metrics(tmp_path):
    """A resumed run does not repeat its baseline evaluation: the before column is read
    from metrics.jsonl, never the final evaluation compared with itself."""
    from dpokit.cli.train import baseline

    write_jsonl(tmp_path / "metrics.jsonl", [{"step": 0, "eval/loss": 0.693},
                                             {"step": 1, "loss": 0.6}])
    assert baseline([{"step": 0, "eval/loss": 0.5}], str(tmp_path))["eval/loss"] == 0.5
    assert baseline([{"step": 4, "eval/loss": 0.4}], str(tmp_path))["eval/loss"] == 0.693
    write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 0.6}])
    with pytest.raises(ValueError, match="no baseline evaluation"):
        baseline([{"step": 4, "eval/loss": 0.4}], str(tmp_path))
