"""Device and precision: auto's choice on each (stubbed) device, the enum spellings YAML
coerces, fp16 with loss scaling (accumulation == one batch, resume == uninterrupted, overflow
skipped and counted), ``dpokit env``, and SIGTERM in the reference pass."""

import json
import os
import signal
import subprocess
import sys
import time
import typing

import pytest
import torch
from conftest import sentiment_rows, write_jsonl
from helpers import crash_after, tiny_trainer
from test_trainer import _grads_at_first_step

from dpokit.cli import main
from dpokit.config import ConfigError, load_config
from dpokit.config.schema import SECTIONS
from dpokit.train import Interrupted, NonFiniteError, hardware
from dpokit.train.hardware import DeviceInfo, HardwareError, choose_precision, pick_device

CPU_AVX2 = DeviceInfo("cpu", "AMD EPYC", "AVX2", native_bf16=False, native_fp16=False)
CPU_AMX = DeviceInfo("cpu", "Intel Xeon Sapphire Rapids", "AVX512", True, True)
CPU_AVX512_BF16 = DeviceInfo("cpu", "AMD EPYC Genoa", "AVX512", True, False)
A100 = DeviceInfo("cuda", "NVIDIA A100", "sm_80", True, True, 80.0)
T4 = DeviceInfo("cuda", "Tesla T4", "sm_75", False, True, 15.0)
V100 = DeviceInfo("cuda", "Tesla V100", "sm_70", False, True, 16.0)
APPLE = DeviceInfo("mps", "Apple GPU (arm64)", "metal", False, True)
REAL_PROBE = hardware.probe


@pytest.mark.parametrize("info,expected", [(CPU_AVX2, "fp32"), (CPU_AMX, "bf16"),
                                           (CPU_AVX512_BF16, "bf16"), (A100, "bf16"),
                                           (T4, "fp16"), (V100, "fp16"), (APPLE, "fp32")])
def test_auto_picks_the_native_precision_of_each_device(info, expected):
    choice = choose_precision("auto", info)
    assert choice.precision == expected
    assert choice.reason.startswith("auto: ") and info.name in choice.line()
    for explicit, kept in (("no", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")):
        assert choose_precision(explicit, info).precision == kept  # explicit choices are kept


@pytest.mark.parametrize("available,expected", [(("cuda", "cpu"), "cuda"),
                                                (("cuda", "mps", "cpu"), "cuda"),
                                                (("mps", "cpu"), "mps"), (("cpu",), "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(available, expected):
    assert pick_device("auto", available) == expected
    assert pick_device("cpu", available) == "cpu"


def test_a_device_that_is_not_there_is_named():
    with pytest.raises(HardwareError, match="device=cuda: not available on this machine"):
        pick_device("cuda", ("cpu",))


def test_the_probe_reads_torchs_capability_checks(monkeypatch):
    probe = REAL_PROBE.__wrapped__  # (uncached; the suite's fixture stubs hardware.probe)
    for amx, avx512_bf16, native in ((False, False, False), (True, False, True),
                                     (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert probe("cpu").native_bf16 is native
        assert probe("cpu").capability == torch.backends.cpu.get_cpu_capability()


def test_explicit_bf16_on_an_emulating_cpu_warns_once_with_the_measured_slowdown(monkeypatch):
    monkeypatch.setattr(hardware, "_warned", set())
    with pytest.warns(UserWarning, match=r"emulates it; a matmul measured here runs \d+x slower"):
        assert hardware.resolve("bf16", "cpu").precision == "bf16"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.resolve("bf16", "cpu")  # once


def test_mps_refuses_what_does_not_run_there_before_loading_the_model(monkeypatch, tmp_path):
    for override, named in (("strategy=fsdp", "strategy=fsdp"),
                            ("strategy=deepspeed", "strategy=deepspeed"),
                            ("quantization=4bit", "QLoRA")):
        with pytest.raises(ConfigError, match=f"device mps: .*{named}"):
            load_config(None, ["device=mps", override])
    # device auto landing on an Apple GPU: the run builder refuses before any model loads
    from dpokit import pipeline

    monkeypatch.setattr(hardware, "available_devices", lambda: ("mps", "cpu"))
    monkeypatch.setattr(hardware, "probe", lambda kind: APPLE)
    monkeypatch.setattr(pipeline, "load_causal_lm",
                        lambda *a, **k: pytest.fail("the model loaded before the check"))
    cfg = load_config(None, ["quantization=4bit", "model=/nonexistent"])
    with pytest.raises(HardwareError, match="device mps: model.quantization=4bit"):
        pipeline.build_policy(cfg)


def _enum_fields():
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for name, hint in hints.items():
            options = typing.get_args(hint) if isinstance(hint, type(int | None)) else (hint,)
            for option in options:
                if typing.get_origin(option) is typing.Literal:
                    yield section, name, typing.get_args(option)


ENUMS = list(_enum_fields())


def test_every_enum_field_is_found():
    names = {name for _, name, _ in ENUMS}
    assert {"mixed_precision", "device", "attention_impl", "mode", "quantization",
            "batch_layout", "regularizer", "wpo", "ref_precision"} <= names


@pytest.mark.parametrize("section,name,allowed", ENUMS, ids=[f"{s}.{n}" for s, n, _ in ENUMS])
def test_every_enum_value_works_from_the_command_line(section, name, allowed):
    """`no`, `off`, `on`, `yes`, `null` are booleans / None to YAML: each value still reaches
    its field, as `key=value` and as `section.key=value`."""
    for value in allowed:
        for key in (name, f"{section}.{name}"):
            try:
                cfg = load_config(None, [f"{key}={value}"])
            except ConfigError as err:  # a combination rule, not the spelling
                assert "must be one of" not in str(err) and "is not a" not in str(err), err
                continue
            assert getattr(getattr(cfg, section), name) == value


def test_yaml_words_in_a_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("mixed_precision: no\nonline:\n  mode: off\nwpo: off\nquantization: null\n")
    cfg = load_config(recipe)
    assert (cfg.optim.mixed_precision, cfg.online.mode, cfg.loss.wpo,
            cfg.model.quantization) == ("no", "off", "off", "none")
    with pytest.raises(ConfigError, match="mixed_precision=True: must be one of"):
        load_config(None, ["mixed_precision=yes"])


def test_dpokit_env_names_the_device_the_choice_and_the_speed(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "auto picks   fp32" in out and "matmul fp32" in out and "torch " in out
    assert main(["env", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["auto_precision"] == "fp32" and record["matmul_gflops"]["fp32"] > 0
    assert set(record["versions"]) >= {"torch", "transformers", "peft", "accelerate",
                                       "deepspeed"}


def test_a_run_prints_its_choice_and_records_the_hardware(tmp_path, tokenizer):
    lines = []
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=1)
    trainer.log = lines.append
    trainer.train()
    assert any(line.startswith("hardware: cpu (test CPU, AVX2), precision fp32: auto:")
               for line in lines)
    record = json.loads((tmp_path / "out/hardware.json").read_text())
    assert record["precision"] == "fp32" and record["device"]["kind"] == "cpu"
    assert "matmul_gflops" in record
    state = next((tmp_path / "out").glob("checkpoints/*/state.json"), None)
    assert state is None  # (no checkpoint asked for)


# --- fp16 with dynamic loss scaling ----------------------------------------------------------

FP16 = dict(mixed_precision="fp16")


@pytest.mark.parametrize("lora", [False, True])
def test_fp16_accumulation_equals_one_big_batch(tmp_path, tokenizer, lora):
    """The gradients the optimizer sees are unscaled, and accumulate like fp32's."""
    results = []
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        trainer = tiny_trainer(tmp_path / f"{batch_size}", tokenizer, lora=lora,
                               batch_size=batch_size, grad_accum_steps=accum, max_steps=1, **FP16)
        assert trainer.engine.scaler is not None
        results.append(_grads_at_first_step(trainer))
    (g0, m0), *others = results
    assert sum(float(v.abs().sum()) for v in g0.values()) > 0
    for grads, metrics in others:
        for name in g0:
            torch.testing.assert_close(grads[name], g0[name], atol=2e-4, rtol=2e-2)
        assert metrics["loss"] == pytest.approx(m0["loss"], rel=1e-3)
    assert m0["loss_scale"] == 65536.0 and m0["skipped_steps"] == 0


def test_fp16_runs_in_fp16_and_differs_from_fp32(tmp_path, tokenizer):
    """The forward really runs in half precision (the test can fail), the loss stays fp32."""
    half = tiny_trainer(tmp_path / "h", tokenizer, max_steps=2, **FP16).train().history
    full = tiny_trainer(tmp_path / "f", tokenizer, max_steps=2).train().history
    assert half[0]["logps/chosen"] == pytest.approx(full[0]["logps/chosen"], rel=1e-2)
    assert half[0]["logps/chosen"] != full[0]["logps/chosen"]
    assert half[1]["loss"] == pytest.approx(full[1]["loss"], rel=2e-2)


def test_fp16_resume_gives_the_same_later_losses_and_scale(tmp_path, tokenizer):
    full = tiny_trainer(tmp_path / "a", tokenizer, max_steps=6, batch_size=3, **FP16).train()
    crash_after(tiny_trainer(tmp_path / "b", tokenizer, max_steps=6, batch_size=3,
                             save_every=3, **FP16), 4)
    resumed = tiny_trainer(tmp_path / "b", tokenizer, max_steps=6, batch_size=3, resume=True,
                           **FP16).train()
    assert [m["step"] for m in resumed.history] == [4, 5, 6]
    later = full.history[3:]
    assert [m["loss"] for m in resumed.history] == pytest.approx([m["loss"] for m in later],
                                                                 rel=1e-6, abs=1e-7)
    assert [m["loss_scale"] for m in resumed.history] == [m["loss_scale"] for m in later]


def test_fp16_overflow_skips_the_step_counts_it_and_goes_on(tmp_path, tokenizer):
    """An inf gradient under fp16 is the loss scale's business (skip, halve, count), not the
    NaN guard's; the weights are not touched by the skipped step."""
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=4, **FP16)
    param = trainer.policy.trainable_parameters()[0]
    calls = {"n": 0}

    def overflow_once(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 2 else grad  # step 2 overflows

    param.register_hook(overflow_once)
    history = trainer.train().history
    assert [m["skipped_steps"] for m in history] == [0, 1, 1, 1]
    assert history[1]["loss_scale"] == history[0]["loss_scale"] / 2
    assert "grad_norm" not in history[1] and "grad_norm" in history[2]


def test_fp16_overflow_at_every_step_is_the_nan_guards(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(hardware, "probe", lambda kind: CPU_AVX2)
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=40, **FP16)
    trainer.engine.MAX_SKIPPED_IN_A_ROW = 3
    trainer.policy.trainable_parameters()[0].register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError, match="gradient norm"):
        trainer.train()
    assert trainer.engine.skipped_steps == 3


def test_fp16_with_sharding_is_refused_by_name():
    with pytest.raises(ConfigError, match="fp16 with distributed.strategy=fsdp"):
        load_config(None, ["mixed_precision=fp16", "strategy=fsdp"])


# --- signals in the reference pass -----------------------------------------------------------

def test_sigterm_in_the_reference_pass_keeps_the_finished_batches(tmp_path, tokenizer):
    """SIGTERM during reference batch 2 of 4: the pass stops after that batch (exit 143), the
    two finished batches are kept, and the next start computes only the other two, with the
    table an uninterrupted pass gives."""
    cache = tmp_path / "cache"
    common = dict(max_steps=1, batch_size=6, precompute_ref_logps=True, ref_cache_dir=str(cache))
    trainer = tiny_trainer(tmp_path / "a", tokenizer, **common)
    calls = {"n": 0}
    original = trainer.policy.reference_logps

    def counted(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(batch)

    trainer.policy.reference_logps = counted
    with pytest.raises(Interrupted) as stop:
        trainer.train()
    assert stop.value.exit_code == 143 and calls["n"] == 2
    assert "kept 2 of 4 train reference batches" in str(stop.value)
    assert len(list(cache.glob("*.partial.pt"))) == 1

    again = tiny_trainer(tmp_path / "a", tokenizer, overwrite_output_dir=True, **common)
    calls2 = {"n": 0}
    original2 = again.policy.reference_logps
    again.policy.reference_logps = lambda b: (calls2.__setitem__("n", calls2["n"] + 1),
                                              original2(b))[1]
    again.train()
    assert calls2["n"] == 2  # only the batches the first pass had not finished
    assert not list(cache.glob("*.partial.pt"))  # complete: the partial file is gone
    fresh = tiny_trainer(tmp_path / "c", tokenizer, **{**common, "ref_cache_dir": None,
                                                       "precompute_ref_logps": True})
    fresh.reference.prepare("train", fresh.source)
    torch.testing.assert_close(again.reference.tables["train"].values,
                               fresh.reference.tables["train"].values, atol=0, rtol=0)


def test_sigterm_during_evaluation_stops_within_one_batch(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=2, eval_rows=sentiment_rows(2),
                           eval_batch_size=2, eval_every=1)
    calls = {"n": 0}
    forward = trainer._forward

    def counted(batch, table):
        if table == "eval":
            calls["n"] += 1
            if calls["n"] == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(batch, table)

    trainer._forward = counted
    with pytest.raises(Interrupted) as stop:
        trainer.train()
    assert calls["n"] == 1 and stop.value.exit_code == 143
    assert stop.value.checkpoint is not None and stop.value.step == 1  # the finished step kept


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


def test_a_signal_outside_a_cooperative_loop_stops_at_once():
    """Where no loop checks stop points (a command's own work between phases), SIGTERM
    raises where it lands instead of being recorded and ignored."""
    from dpokit.core.signals import StopRequests, cooperative, stop_point

    with StopRequests(lambda _: None).installed():
        with pytest.raises(Interrupted, match="stopped by SIGTERM during a step that does not"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    with StopRequests(lambda _: None).installed():
        with cooperative():
            os.kill(os.getpid(), signal.SIGTERM)  # recorded: the loop acts at its next point
            time.sleep(0.1)
        with pytest.raises(Interrupted, match="during sampling; nothing was saved"):
            stop_point("sampling")


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
