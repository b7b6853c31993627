"""Device and precision: auto's choice on each (stubbed) device, the enum spellings YAML
coerces, fp16 with loss scaling (accumulation == one batch, resume == uninterrupted, overflow
skipped and counted), ``dpokit env``, and SIGTERM in the reference pass."""

import os
import platform
import signal
import subprocess
import sys
import time

import pytest
import torch

from dpokit.core import hardware
from dpokit.core.hardware import DeviceInfo, HardwareError, choose_precision, pick_device
from dpokit.train import Interrupted

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
    monkeypatch.delenv(hardware.NATIVE_BF16, raising=False)  # (the suite may run with it set)
    for amx, avx512_bf16, native in ((False, False, False), (True, False, True),
                                     (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert probe("cpu").native_bf16 is native
        assert probe("cpu").capability == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("value,native", [("0", False), ("1", True)])
def test_DPOKIT_NATIVE_BF16_sets_what_the_probe_says_and_auto_picks(monkeypatch, value, native):
    """Whatever torch says of the CPU (both ways), the variable decides; the run's line and
    ``dpokit env`` say it was set."""
    probe = REAL_PROBE.__wrapped__
    monkeypatch.setenv(hardware.NATIVE_BF16, value)
    for asked in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=asked: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert probe("cpu").native_bf16 is native
    monkeypatch.setattr(hardware, "probe", probe)
    choice = hardware.resolve("auto", "cpu")
    assert choice.precision == ("bf16" if native else "fp32")
    assert choice.reason.endswith(f"(DPOKIT_NATIVE_BF16={value})")
    record = hardware.environment(choice, quick=True)
    assert record["device"]["native_bf16"] is native and record["native_bf16_set"] == value
    assert f"(set by DPOKIT_NATIVE_BF16={value}, not asked of the device)" in hardware.describe(
        record)
    monkeypatch.setenv(hardware.NATIVE_BF16, "yes")
    with pytest.raises(HardwareError, match="DPOKIT_NATIVE_BF16='yes': must be 0 or 1"):
        probe("cpu")


def test_explicit_bf16_on_an_emulating_cpu_warns_once_with_the_measured_slowdown(monkeypatch):
    monkeypatch.setattr(hardware, "_warned", set())
    monkeypatch.setattr(hardware, "probe", lambda kind: CPU_AVX2)
    with pytest.warns(UserWarning, match=r"emulates it; a matmul measured here runs \d+x slower"):
        assert hardware.resolve("bf16", "cpu").precision == "bf16"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.resolve("bf16", "cpu")  # once


# --- fp16 with dynamic loss scaling ----------------------------------------------------------


# --- signals in the reference pass -----------------------------------------------------------


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


HEAP_PROBE = """
import resource, sys, torch
from dpokit.core.hardware import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults_of_one_step():  # a step's activations: allocated, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones(12_000_000) for _ in range(4)]  # 4 x 48 MB: above glibc's mmap threshold
    del xs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [faults_of_one_step() for _ in range(8)]
print(kept, faults[-1] + faults[-2])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_keeping_freed_memory_stops_the_page_faults_of_later_steps():
    """Under glibc's defaults every 48 MB buffer goes back to the OS on free and faults in again
    (11,700 pages of 4 KiB each, every step); after ``keep_freed_memory`` the heap holds them:
    once the freed space has coalesced (a few steps) the later steps fault nothing."""
    runs = {}
    for mode in ("system", "keep"):
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True,
                             text=True, check=True).stdout.split()
        runs[mode] = (out[0] == "True", int(out[1]))
    assert runs["system"][0] is False and runs["keep"][0] is True
    assert runs["system"][1] > 2 * 40_000  # 2 x 192 MB faulted in again
    assert runs["keep"][1] < 1_000
