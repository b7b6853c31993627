"""2 processes == 1 process: data-parallel (DDP over gloo, CPU) gives the same trajectory,
also for KTO, whose KL estimate is a batch mean pooled across processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, world: int, batch_size: int, lora: bool, loss: str, tries: int = 3) -> dict:
    """Launch the workers; a rendezvous port taken between probing and binding is retried."""
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(tries - 1):
        try:
            return _launch(out, world, batch_size, lora, loss)
        except PortTaken:
            continue
    return _launch(out, world, batch_size, lora, loss)


class PortTaken(RuntimeError):
    pass


def _launch(out: Path, world: int, batch_size: int, lora: bool, loss: str) -> dict:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
        if world == 1:
            for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
                env.pop(key)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), str(batch_size),
                                       "1" if lora else "0", loss], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    if any(p.returncode for p in procs) and any("Address already in use" in o for o in outputs):
        raise PortTaken(port)
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("lora,loss", [(False, "sigmoid"), (True, "sigmoid"), (False, "kto")])
def test_two_processes_equal_one(tmp_path, lora, loss):
    """4 pairs per step: one process with batch 4, or two processes with batch 2 each."""
    one = _run(tmp_path / "one", 1, 4, lora, loss)
    two = _run(tmp_path / "two", 2, 2, lora, loss)
    assert (one["world"], two["world"]) == (1, 2)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-4)
    assert one["losses"][-1] != pytest.approx(one["losses"][0], rel=1e-3)
    for name, value in one["params"].items():
        assert two["params"][name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
