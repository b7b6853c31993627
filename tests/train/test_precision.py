"""The loop in the precision auto picks: the hardware line and record of a run, fp16 with dynamic
loss scaling (accumulation, resume, overflow), and signals in the reference pass and in
evaluation."""

import json
import os
import platform
import signal

import pytest
import torch
from conftest import sentiment_rows
from helpers import crash_after, tiny_trainer
from test_trainer import _grads_at_first_step

from dpokit.config import ConfigError, load_config
from dpokit.core import hardware
from dpokit.core.hardware import DeviceInfo
from dpokit.train import Interrupted, NonFiniteError

CPU_AVX2 = DeviceInfo("cpu", "AMD EPYC", "AVX2", False, False)


def test_a_run_prints_its_choice_and_records_the_hardware(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(hardware, "probe", lambda kind: CPU_AVX2)
    lines = []
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=1, mixed_precision="auto")
    trainer.log = lines.append
    trainer.train()
    assert any(line.startswith("hardware: cpu (AMD EPYC, AVX2), precision fp32: auto:")
               for line in lines)
    record = json.loads((tmp_path / "out/hardware.json").read_text())
    assert record["precision"] == "fp32" and record["device"]["kind"] == "cpu"
    assert "matmul_gflops" in record
    glibc = platform.libc_ver()[0] == "glibc"
    assert trainer.hardware.heap_kept is glibc
    assert record["host_memory"] == ("keep" if glibc else "system")
    assert any(line.endswith("stays in the heap (run.host_memory)") for line in lines) is glibc
    assert tiny_trainer(tmp_path / "sys", tokenizer, max_steps=1,
                        host_memory="system").hardware.heap_kept is False
    state = next((tmp_path / "out").glob("checkpoints/*/state.json"), None)
    assert state is None  # (no checkpoint asked for)


@pytest.mark.any_precision
@pytest.mark.parametrize("native", [False, True])
def test_a_test_that_compares_runs_at_auto_fails_on_every_host(tmp_path, tokenizer, native,
                                                             monkeypatch, auto_precision):
    """The suite's guard (conftest.AutoRuns): a test building two runs at auto fails whatever
    auto picks; runs with their precision named (tests/helpers.py: fp32) are not counted, and
    pick the same on every host."""
    cpu = DeviceInfo("cpu", "test CPU", "AVX512" if native else "AVX2", native, False)
    monkeypatch.setattr(hardware, "probe", lambda kind: cpu)
    pinned = [tiny_trainer(tmp_path / f"p{i}", tokenizer) for i in range(2)]
    assert [t.precision for t in pinned] == ["fp32", "fp32"] and auto_precision.count == 0
    picked = tiny_trainer(tmp_path / "a", tokenizer, mixed_precision="auto").precision
    assert picked == ("bf16" if native else "fp32")
    auto_precision.check("one run")  # one run at auto compares nothing with another
    tiny_trainer(tmp_path / "b", tokenizer, mixed_precision="auto")
    with pytest.raises(AssertionError, match="builds 2 runs with mixed_precision=auto"):
        auto_precision.check("this test")


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
