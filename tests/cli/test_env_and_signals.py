"""`dpokit env`, the device refusals a run builder makes before loading a model, and signals
through the command line (the reference pass, writing rows)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import sentiment_rows, write_jsonl

from dpokit.cli import main
from dpokit.config import ConfigError, load_config
from dpokit.core import hardware
from dpokit.core.hardware import DeviceInfo, HardwareError
from dpokit.train import Interrupted

APPLE = DeviceInfo("mps", "Apple GPU (arm64)", "metal", False, True)



def test_mps_refuses_what_does_not_run_there_before_loading_the_model(monkeypatch, tmp_path):
    for override, named in (("strategy=fsdp", "strategy=fsdp"),
                            ("strategy=deepspeed", "strategy=deepspeed"),
                            ("quantization=4bit", "QLoRA")):
        with pytest.raises(ConfigError, match=f"device mps: .*{named}"):
            load_config(None, ["device=mps", override])
    # device auto landing on an Apple GPU: the run builder refuses before any model loads
    from dpokit.runs import causal_lm as pipeline

    monkeypatch.setattr(hardware, "available_devices", lambda: ("mps", "cpu"))
    monkeypatch.setattr(hardware, "probe", lambda kind: APPLE)
    monkeypatch.setattr(pipeline, "load_causal_lm",
                        lambda *a, **k: pytest.fail("the model loaded before the check"))
    cfg = load_config(None, ["quantization=4bit", "model=/nonexistent"])
    with pytest.raises(HardwareError, match="device mps: model.quantization=4bit"):
        pipeline.policy_for(cfg)


def test_dpokit_env_names_the_device_the_choice_and_the_speed(capsys, monkeypatch):
    cpu = DeviceInfo("cpu", "AMD EPYC", "AVX2", native_bf16=False, native_fp16=False)
    monkeypatch.setattr(hardware, "probe", lambda kind: cpu)  # (a CPU without bf16)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "auto picks   fp32" in out and "matmul fp32" in out and "torch " in out
    assert main(["env", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["auto_precision"] == "fp32" and record["matmul_gflops"]["fp32"] > 0
    assert set(record["versions"]) >= {"torch", "transformers", "peft", "accelerate",
                                       "deepspeed"}


def test_sigterm_during_the_reference_pass_through_the_cli(tmp_path, tiny_model_dir):
    """The command exits 143 with one line saying what was kept, no traceback."""
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(40))
    out, cache = tmp_path / "run", tmp_path / "cache"
    cmd = [sys.executable, "-m", "dpokit.cli", "train", f"model={tiny_model_dir}",
           f"train_data={data}", "lora=false", "max_steps=2", "batch_size=1",
           f"output_dir={out}", "progress_bar=false", "log_with=[]", f"ref_cache_dir={cache}"]
    # each reference batch takes 0.2 s more, so the 240 batches outlast the signal's delivery
    (tmp_path / "sitecustomize.py").write_text(
        "import time\nfrom dpokit.policies.causal_lm import CausalLMPolicy as P\n"
        "original = P.reference_logps\n"
        "def slow(self, batch):\n    time.sleep(0.2)\n    return original(self, batch)\n"
        "P.reference_logps = slow\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tmp_path))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 120
    while not (out / "hardware.json").is_file() and time.time() < deadline:  # train started
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM during the reference pass; kept" in stderr, stderr
    assert len(list(cache.glob("*.partial.pt"))) == 1


def test_sigterm_while_writing_rows_leaves_the_old_output(tmp_path):
    from dpokit.core.signals import StopRequests
    from dpokit.data.builders.common import write_rows

    out = tmp_path / "pairs.jsonl"
    out.write_text('{"old": 1}\n')

    def rows():
        for i in range(5000):
            if i == 1500:
                os.kill(os.getpid(), signal.SIGTERM)
            yield {"i": i}

    with StopRequests(lambda _: None).installed():
        with pytest.raises(Interrupted, match="during writing rows;.*is untouched"):
            write_rows(rows(), out)
    assert out.read_text() == '{"old": 1}\n'
    assert not list(tmp_path.glob("*.tmp"))
