"""The command line's promises: every failure one line with exit code 2 (--debug for the
traceback), an unusable output folder refused before any compute, a signal during training
saving a checkpoint and exiting without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import sentiment_rows, write_jsonl
from helpers import tiny_trainer

from dpokit.cli import main
from dpokit.train.folder import OutputDirError


@pytest.mark.parametrize("make", ["file", "readonly"])
def test_unusable_output_dir_is_refused_before_any_compute(tmp_path, tokenizer, make, capsys,
                                                           tiny_model_dir):
    target = tmp_path / "out"
    if make == "file":
        target.write_text("not a folder")
        reason = "is a file, not a folder"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write read-only folders")
        target.mkdir()
        target.chmod(0o500)
        reason = "is not writable"
    with pytest.raises(OutputDirError, match=reason):
        tiny_trainer(tmp_path, tokenizer)
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    assert main(["train", f"model={tiny_model_dir}", f"train_data={data}", "lora=false",
                 f"output_dir={target}", "progress_bar=false", "log_with=[]"]) == 2
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_exits_without_traceback(tmp_path, tiny_model_dir,
                                                               signum, code):
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(4))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dpokit.cli", "train", f"model={tiny_model_dir}",
           f"train_data={data}", "lora=false", "max_steps=100000", "batch_size=2",
           f"output_dir={out}", "progress_bar=false", "log_with=[]",
           "precompute_ref_logps=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    assert f"dpokit: stopped by {name} after step" in stderr and "checkpoint saved to" in stderr
    [checkpoint] = (out / "checkpoints").iterdir()
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    assert step >= 1 and f"after step {step};" in stderr


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import dpokit.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("first line of a library message\n  second line")

    monkeypatch.setattr(cli, "cmd_losses", broken)
    assert main(["losses"]) == 2
    err = capsys.readouterr().err
    assert err == "dpokit: error: first line of a library message / second line\n"
    with pytest.raises(RuntimeError):
        main(["--debug", "losses"])
    monkeypatch.setenv("DPOKIT_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["losses"])
