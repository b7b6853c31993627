"""2 processes == 1 process: data-parallel (DDP over gloo, CPU) gives the same trajectory,
also for KTO, whose KL estimate is a batch mean pooled across processes."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TESTS, sentiment_rows, write_jsonl

WORKER = TESTS / "ddp_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, world: int, batch_size: int, lora: bool, loss: str = "sigmoid",
         tries: int = 3, **cfg) -> dict:
    """Launch the workers; a rendezvous port taken between probing and binding is retried."""
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(tries - 1):
        try:
            return _launch(out, world, batch_size, lora, loss, cfg)
        except PortTaken:
            continue
    return _launch(out, world, batch_size, lora, loss, cfg)


class PortTaken(RuntimeError):
    pass


def _launch(out: Path, world: int, batch_size: int, lora: bool, loss: str, cfg: dict) -> dict:
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
                                       "1" if lora else "0", loss, json.dumps(cfg)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
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
    # Adam divides each update by sqrt(v): on near-zero gradients the all-reduce's fp32
    # rounding becomes a visible step (lr 1e-2), so weights agree to 1e-4, not 1e-5 (seen on
    # the pre-refactor code too, with torch 2.13 / accelerate 1.15)
    for name, value in one["params"].items():
        assert two["params"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name


@pytest.mark.parametrize("lora", [False, True])
def test_two_fsdp2_processes_equal_one_process(tmp_path, lora):
    """FSDP2 (fully_shard per decoder layer, gloo) in 2 processes with batch 2 each == one
    plain process with batch 4: losses, gradient norms and the updated weights."""
    one = _run(tmp_path / "one", 1, 4, lora)
    two = _run(tmp_path / "two", 2, 2, lora, strategy="fsdp")
    alone = _run(tmp_path / "alone", 1, 4, lora, strategy="fsdp")  # no launcher: a group of 1
    assert two["world"] == 2
    assert alone["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-4)
    for name, value in one["params"].items():  # the same tolerance as DDP's (see above)
        assert two["params"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    # final/ is an ordinary folder either way: the gathered weights, not shards
    if lora:
        from safetensors.torch import load_file
        a = load_file(tmp_path / "one" / "out" / "final" / "adapter_model.safetensors")
        b = load_file(tmp_path / "two" / "out" / "final" / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert b[key].shape == a[key].shape
            assert b[key].double().sum().item() == pytest.approx(a[key].double().sum().item(),
                                                                 rel=1e-4, abs=1e-4)


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (the README's test "
                                     "command installs it)")


@needs_deepspeed
@pytest.mark.parametrize("stage,lora,accum,precompute,tied", [
    pytest.param(2, False, 1, True, False, marks=pytest.mark.slow),
    (3, False, 2, False, False), (3, True, 1, True, True)])
def test_two_zero_processes_equal_one_process(tmp_path, stage, lora, accum, precompute, tied):
    """DeepSpeed ZeRO-2/3 (gloo, CPU) in 2 processes == one plain process with the same global
    batch of 4: losses, gradient norms (DeepSpeed clips) and the updated weights; also with 2
    accumulated micro-batches per step (the boundary is set by hand), with a live ``copy``
    reference (partitioned by its own ZeRO-3 inference engine) and with tied embeddings (the
    LM head weight is the embedding's, registered with the scorer); the reference cache key
    sees the gathered weights; final/ holds the whole weights in the ordinary format."""
    # every tiny weight is under DeepSpeed's default persistence threshold (kept whole):
    # threshold 0 partitions them all, as ZeRO-3 does a real model's
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    one = _run(tmp_path / "one", 1, 4, lora, precompute_ref_logps=precompute, tied=tied)
    two = _run(tmp_path / "two", 2, 2 // accum, lora, strategy="deepspeed", zero_stage=stage,
               grad_accum_steps=accum, precompute_ref_logps=precompute, tied=tied,
               deepspeed_config=str(ds))
    assert two["world"] == 2
    assert two["fingerprint"] == one["fingerprint"]  # (was 0.0 from the empty partitions)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-4)
    for name, value in one["params"].items():  # the same tolerance as DDP's (see above)
        assert two["params"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    from safetensors.torch import load_file
    file = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = (load_file(tmp_path / run / "out" / "final" / file) for run in ("one", "two"))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].shape == a[key].shape, key
        assert b[key].double().sum().item() == pytest.approx(a[key].double().sum().item(),
                                                             rel=1e-4, abs=1e-4), key


@pytest.mark.parametrize("first,then", [
    ((2, "fsdp"), (1, "ddp")), pytest.param((1, "ddp"), (2, "fsdp"), marks=pytest.mark.slow),
    pytest.param((2, "deepspeed"), (1, "ddp"), marks=[needs_deepspeed, pytest.mark.slow]),
    pytest.param((1, "ddp"), (2, "deepspeed"), marks=needs_deepspeed)])
def test_a_checkpoint_resumes_on_another_process_count(tmp_path, first, then):
    """Checkpoints hold whole tensors keyed by name: 2 FSDP2 or ZeRO-3 processes -> 1
    process and the reverse continue with the losses of the uninterrupted run."""
    full = _run(tmp_path / "full", 1, 4, True, max_steps=4)
    (w1, s1), (w2, s2) = first, then
    out = tmp_path / "split"
    ds = tmp_path / "ds.json"  # ZeRO-3 partitions even the tiny weights (see above)
    ds.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    zero = {"deepspeed_config": str(ds)}
    _run(out, w1, 4 // w1, True, max_steps=4, save_every=2, strategy=s1,
         **(zero if s1 == "deepspeed" else {}))
    shutil.rmtree(out / "out" / "checkpoints" / "step-0000004")  # as if stopped after step 2
    resumed = _run(out, w2, 4 // w2, True, max_steps=4, save_every=2, strategy=s2, resume=True,
                   **(zero if s2 == "deepspeed" else {}))
    assert resumed["steps"] == [3, 4]
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-4, abs=1e-5)


def test_torchrun_cli_trains_on_two_cpu_processes(tmp_path, tiny_model_dir):
    """`torchrun -m dpokit.cli train` on a machine without a GPU: accelerate alone would leave
    each process training by itself on all the data; dpokit asks for the CPU backend."""
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpokit.cli", "train", f"model={tiny_model_dir}", f"train_data={data}",
           "eval_data=null", "lora=false", "max_steps=2", "batch_size=2", f"output_dir={out}",
           f"ref_cache_dir={tmp_path / 'cache'}", "progress_bar=false", "log_with=[]"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("2 steps on 2 process(es)") == 1, proc.stdout  # rank 0 prints
    assert proc.stdout.count(" pairs kept;") == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@needs_deepspeed
def test_accelerate_launch_with_the_shipped_deepspeed_config(tmp_path, tiny_model_dir):
    """`accelerate launch --config_file configs/accelerate/deepspeed_single_node.yaml`: the
    DeepSpeed JSON it names is read, ZeRO-3 trains on 2 CPU processes, final/ is ordinary."""
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    out = tmp_path / "run"
    root = REPO
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "configs/accelerate/deepspeed_single_node.yaml", "--num_processes", "2",
           "--main_process_port", str(_free_port()),
           "-m", "dpokit.cli", "train", f"model={tiny_model_dir}", f"train_data={data}",
           "eval_data=null", "lora=false", "max_steps=2", "batch_size=2", f"output_dir={out}",
           f"ref_cache_dir={tmp_path / 'cache'}", "progress_bar=false", "log_with=[]",
           "distributed.strategy=deepspeed"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("2 steps on 2 process(es)") == 1, proc.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "final" / "model.safetensors").is_file()


class _FakeAccelerator:
    def __init__(self, num_processes, distributed_type):
        self.num_processes, self.distributed_type = num_processes, distributed_type


def test_launch_mismatch_and_sharding_engines_are_refused(monkeypatch):
    from accelerate.utils import DistributedType

    from dpokit.train.strategy import check_launch as _check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launched as 2 processes .* accelerate runs 1"):
        _check_launch(_FakeAccelerator(1, DistributedType.NO))
    _check_launch(_FakeAccelerator(2, DistributedType.MULTI_CPU))
    for engine in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(NotImplementedError,
                           match=rf"{engine.name} \(an accelerate plugin\) is not supported"):
            _check_launch(_FakeAccelerator(2, engine))
    # accelerate launched with its DeepSpeed config: dpokit drives DeepSpeed itself
    _check_launch(_FakeAccelerator(2, DistributedType.DEEPSPEED), "deepspeed")
    monkeypatch.delenv("WORLD_SIZE")
    _check_launch(_FakeAccelerator(1, DistributedType.NO))
