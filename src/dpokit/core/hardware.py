"""Which device a run computes on and in which precision, chosen from what the hardware does
natively, and said out loud.

``mixed_precision: auto`` picks bf16 autocast where the device computes bf16 natively (a CUDA
GPU with bf16 units; a CPU with AMX or AVX512-BF16), fp16 autocast with dynamic loss scaling on
a CUDA GPU without bf16 (T4, V100), and fp32 elsewhere (a CPU that only emulates bf16, where it
runs 25-150x slower than fp32; Apple GPUs). ``device: auto`` picks CUDA, then MPS, then the
CPU. Explicit choices are kept; an explicit bf16 on a device that emulates it warns once, with
the slowdown measured on the spot. ``DPOKIT_NATIVE_BF16=0`` or ``1`` says what the device does
instead of asking it (what ``auto`` picks on another machine; the tests run both ways).

    >>> cpu = DeviceInfo("cpu", "AMD EPYC", "AVX2", native_bf16=False, native_fp16=False)
    >>> choose_precision("auto", cpu).precision
    'fp32'
    >>> t4 = DeviceInfo("cuda", "Tesla T4", "sm_75", native_bf16=False, native_fp16=True)
    >>> choose_precision("auto", t4).precision, choose_precision("no", t4).precision
    ('fp16', 'fp32')
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("auto", "no", "fp32", "fp16", "bf16")  # "no": accelerate's name for fp32
DEVICES = ("auto", "cpu", "cuda", "mps")
HOST_MEMORY = ("keep", "system")  # run.host_memory: see keep_freed_memory
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceInfo:
    """What one device computes natively. kind: cpu | cuda | mps; name: the processor or GPU;
    capability: the CPU's vector ISA as torch reports it (``AVX2``, ``AVX512``) or the GPU's
    ``sm_XY``; memory_gb: the GPU's memory (None on a CPU)."""

    kind: str
    name: str
    capability: str
    native_bf16: bool
    native_fp16: bool
    memory_gb: float | None = None


@dataclass(frozen=True)
class HardwareChoice:
    """The device and precision a run uses, and why (one sentence); whether freed host memory
    stays in the heap (:func:`keep_freed_memory`)."""

    device: DeviceInfo
    precision: str  # fp32 | bf16 | fp16
    reason: str
    heap_kept: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype forwards autocast to; None for fp32."""
        return None if self.precision == "fp32" else DTYPES[self.precision]

    def line(self) -> str:
        """The one line a run prints at its start.

        >>> info = DeviceInfo("cpu", "AMD EPYC", "AVX2", False, False)
        >>> HardwareChoice(info, "fp32", "no native bf16").line()
        'hardware: cpu (AMD EPYC, AVX2), precision fp32: no native bf16'
        """
        return (f"hardware: {self.device.kind} ({self.device.name}, {self.device.capability}), "
                f"precision {self.precision}: {self.reason}"
                + ("; freed memory stays in the heap (run.host_memory)" if self.heap_kept else ""))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 (Linux; elsewhere platform's name)
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16: the CPU computes bf16 matmuls in hardware (oneDNN uses them)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


NATIVE_BF16 = "DPOKIT_NATIVE_BF16"  # 0 | 1: native bf16 as set, not asked of the device


class HardwareError(ValueError):
    """A device asked for that is not there, or a setting that cannot run on the device."""


def native_bf16_override() -> bool | None:
    """``DPOKIT_NATIVE_BF16``: 1 or 0 says the device computes bf16 natively or not, in place
    of what the probe finds (so ``auto`` picks as it would on another machine); None: unset.

    >>> os.environ[NATIVE_BF16] = "0"; native_bf16_override()
    False
    >>> del os.environ[NATIVE_BF16]; native_bf16_override() is None
    True
    """
    value = os.environ.get(NATIVE_BF16, "").strip()
    if value not in ("", "0", "1"):
        raise HardwareError(f"{NATIVE_BF16}={value!r}: must be 0 or 1 (or unset)")
    return None if value == "" else value == "1"


@functools.cache
def probe(kind: str) -> DeviceInfo:
    """What ``kind`` (cpu, cuda, mps) computes natively: torch's answer, native bf16 as
    ``DPOKIT_NATIVE_BF16`` sets it (cached per process)."""
    info = _ask_torch(kind)
    override = native_bf16_override()
    return info if override is None else dataclasses.replace(info, native_bf16=override)


def _ask_torch(kind: str) -> DeviceInfo:
    if kind == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        try:  # torch >= 2.3 can tell emulated bf16 (pre-Ampere) from native
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            bf16 = torch.cuda.is_bf16_supported() and props.major >= 8
        return DeviceInfo("cuda", props.name, f"sm_{props.major}{props.minor}", bool(bf16),
                          props.major >= 6, round(props.total_memory / 2**30, 1))
    if kind == "mps":
        return DeviceInfo("mps", f"Apple GPU ({platform.machine()})", "metal",
                          native_bf16=False, native_fp16=True)
    amx_fp16 = getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)()
    return DeviceInfo("cpu", _cpu_name(), torch.backends.cpu.get_cpu_capability(),
                      _cpu_native_bf16(), bool(amx_fp16))


def available_devices() -> tuple[str, ...]:
    """The device kinds this process can compute on, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return (*found, "cpu")


def pick_device(requested: str, available: tuple[str, ...]) -> str:
    """``auto``: the first of cuda, mps, cpu that is available; else the one asked for.

    >>> pick_device("auto", ("mps", "cpu")), pick_device("cpu", ("cuda", "cpu"))
    ('mps', 'cpu')
    """
    if requested not in DEVICES:
        raise HardwareError(f"device={requested!r}: must be one of {DEVICES}")
    if requested == "auto":
        return available[0]
    if requested not in available:
        raise HardwareError(f"device={requested}: not available on this machine (found: "
                            f"{', '.join(available)}); use device=auto")
    return requested


def choose_precision(requested: str, info: DeviceInfo) -> HardwareChoice:
    """The precision for ``requested`` (auto, no, fp32, fp16, bf16) on ``info``'s device."""
    if requested not in PRECISIONS:
        raise HardwareError(f"mixed_precision={requested!r}: must be one of {PRECISIONS}")
    if requested in ("no", "fp32"):
        return HardwareChoice(info, "fp32", "set in the config")
    if requested in ("bf16", "fp16"):
        native = info.native_bf16 if requested == "bf16" else info.native_fp16
        emulated = "" if native else f"; this {info.kind} has no native {requested} (slower)"
        return HardwareChoice(info, requested, "set in the config" + emulated)
    if info.native_bf16 and info.kind in ("cuda", "cpu"):
        what = "a GPU with bf16 units" if info.kind == "cuda" else "AMX / AVX512-BF16"
        return HardwareChoice(info, "bf16", f"auto: native bf16 ({what})")
    if info.kind == "cuda":
        return HardwareChoice(info, "fp16", "auto: this GPU has no bf16 units; fp16 autocast "
                                            "with dynamic loss scaling")
    why = ("no native bf16 on this CPU (torch emulates it, far slower than fp32)"
           if info.kind == "cpu" else "fp32 on an Apple GPU (bf16 and fp16 are picked only on "
                                      "CUDA GPUs and bf16-native CPUs)")
    return HardwareChoice(info, "fp32", f"auto: {why}")


def resolve(mixed_precision: str, device: str = "auto",
            host_memory: str = "system") -> HardwareChoice:
    """The device and precision of a run from its settings, on this machine; with
    ``host_memory="keep"`` on a CPU, freed memory is kept in the heap from here on."""
    kind = pick_device(device, available_devices())
    choice = choose_precision(mixed_precision, probe(kind))
    override = native_bf16_override()
    if override is not None and mixed_precision == "auto":
        choice = dataclasses.replace(choice, reason=f"{choice.reason} ({NATIVE_BF16}="
                                                    f"{int(override)})")
    if mixed_precision == "bf16" and not choice.device.native_bf16 and kind == "cpu":
        _warn_emulated(choice.device)
    kept = host_memory == "keep" and kind == "cpu" and keep_freed_memory()
    return dataclasses.replace(choice, heap_kept=kept)


def check_device_supports(device: str, *, strategy: str = "ddp",
                          quantization: str = "none") -> None:
    """Refuse, before any model loads, what does not run on ``device`` (an Apple GPU has no
    process groups for FSDP2 / DeepSpeed and no bitsandbytes kernels for QLoRA).

    >>> check_device_supports("mps", strategy="fsdp")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dpokit.core.hardware.HardwareError: device mps: distributed.strategy=fsdp does not run ...
    """
    if device != "mps":
        return
    if strategy != "ddp":
        raise HardwareError(f"device mps: distributed.strategy={strategy} does not run on Apple "
                            f"GPUs (no NCCL/gloo process groups for MPS tensors); train on the "
                            f"CPU or a CUDA GPU")
    if quantization != "none":
        raise HardwareError("device mps: model.quantization=4bit (QLoRA) needs bitsandbytes' "
                            "CUDA kernels; use lora=true without quantization on Apple GPUs")


def matmul_gflops(device: str, dtype: torch.dtype, size: int = 512,
                  seconds: float = 0.25) -> float:
    """Measured GFLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on ``device`` (at least
    one call, about ``seconds`` long)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b  # warm up (allocations, kernel choice)
    sync()
    calls, started = 0, time.perf_counter()
    while True:
        a @ b
        calls += 1
        sync()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 2 * size**3 * calls / elapsed / 1e9


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Keep host memory a step frees in the process heap for the next step (glibc only).

    glibc hands allocations above its mmap threshold (128 KiB, adapting up to 32 MiB) to the
    OS on free, and trims the heap's top: a CPU training step, which frees and re-allocates the
    same activations every step, then page-faults them in again each time (up to a million
    faults, 8-14 s of a 20-25 s SmolLM2 step on a 2-core EPYC VM). ``mallopt(M_MMAP_MAX, 0)``
    serves every allocation from the heap and ``M_TRIM_THRESHOLD = (size_t)-1`` never shrinks
    it: after the largest step the run stops faulting. The process's memory does not shrink
    after its peak. Returns False (and changes nothing) off glibc.

    >>> isinstance(keep_freed_memory(), bool)
    True
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1))


QUICK = (256, 0.03)  # matmul size and seconds of a run's record (and the bf16 warning)


@functools.cache
def _measured(kind: str, size: int, seconds: float) -> dict[str, float]:
    """GFLOP/s per dtype on ``kind``, measured once per process."""
    return {name: round(matmul_gflops(kind, dtype, size, seconds), 2)
            for name, dtype in DTYPES.items()}


_warned: set[str] = set()


def _warn_emulated(info: DeviceInfo) -> None:
    if info.name in _warned:
        return
    _warned.add(info.name)
    speed = _measured("cpu", *QUICK)  # (the run's hardware.json reuses this measurement)
    fp32, bf16 = speed["fp32"], speed["bf16"]
    warnings.warn(f"mixed_precision=bf16 on a CPU without native bf16 ({info.name}, "
                  f"{info.capability}): torch emulates it; a matmul measured here runs "
                  f"{fp32 / max(bf16, 1e-9):.0f}x slower than fp32 ({bf16:.1f} vs {fp32:.1f} "
                  f"GFLOP/s). mixed_precision=auto picks fp32 on this machine.", stacklevel=3)


def environment(choice: HardwareChoice | None = None, quick: bool = False) -> dict[str, Any]:
    """The whole record: package versions, the device and what it does natively, the
    precision ``auto`` picks and why, and measured matmul GFLOP/s per dtype (about a second;
    ``quick``: 256 x 256 matmuls for a tenth of that, what a run records)."""
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "transformers", "peft", "accelerate", "deepspeed", "dpokit"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    choice = choice or resolve("auto")
    auto = choose_precision("auto", choice.device)
    record: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": versions, "devices": list(available_devices()),
        "device": asdict(choice.device), "threads": torch.get_num_threads(),
        "precision": choice.precision, "reason": choice.reason,
        "host_memory": "keep" if choice.heap_kept else "system",
        "auto_precision": auto.precision, "auto_reason": auto.reason,
        "native_bf16_set": os.environ.get(NATIVE_BF16) if native_bf16_override() is not None
        else None}
    size, seconds = QUICK if quick else (512, 0.3)
    if choice.device.kind == "cuda":  # 512 is launch-bound on a GPU (an H200: 9.9 of ~790 TFLOP/s)
        size = 2048 if quick else 8192
    record["matmul_gflops"] = _measured(choice.device.kind, size, seconds)
    record["matmul_size"] = size
    return record


def write_record(choice: HardwareChoice, directory: str | Path) -> Path:
    """``hardware.json`` in a run folder: the whole :func:`environment` record (versions,
    capabilities, a quick matmul measurement: ~0.1 s)."""
    path = Path(directory) / "hardware.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(environment(choice, quick=True), indent=1))
    return path


def describe(record: dict[str, Any]) -> str:
    """``dpokit env``'s text: one fact a line."""
    d = record["device"]
    lines = [f"python {record['python']} on {record['platform']}"]
    lines += [f"{k:<13}{v or 'not installed'}" for k, v in record["versions"].items()]
    lines += [f"devices      {', '.join(record['devices'])} (threads: {record['threads']})",
              f"device       {d['kind']}: {d['name']} ({d['capability']}"
              + (f", {d['memory_gb']} GiB" if d.get("memory_gb") else "") + ")",
              f"native bf16  {'yes' if d['native_bf16'] else 'no'}"
              + (f" (set by {NATIVE_BF16}={record['native_bf16_set']}, not asked of the "
                 "device)" if record.get("native_bf16_set") is not None else ""),
              f"native fp16  {'yes' if d['native_fp16'] else 'no'}",
              f"auto picks   {record['auto_precision']} ({record['auto_reason']})",
              f"host memory  {record.get('host_memory', 'system')} here; a CPU run keeps "
              "freed memory in the heap (run.host_memory)"]
    size = record.get("matmul_size", 512)
    for name, gflops in record.get("matmul_gflops", {}).items():
        lines.append(f"matmul {name:<6}{gflops:9.1f} GFLOP/s ({size} x {size})")
    return "\n".join(lines)
