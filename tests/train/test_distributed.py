"""2 processes == 1 process: data-parallel (DDP over gloo, CPU), FSDP2 and ZeRO give the same
trajectory, also for KTO, whose KL estimate is a batch mean pooled across processes; in fp32 to
fp32's tolerances, and in bf16 (native or emulated: the models are tiny) to bf16's."""

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
from helpers import BF16

WORKER = TESTS / "ddp_worker.py"

# How far two computations of one trajectory may differ, by precision.
# fp32 (mixed_precision=no): the processes add the same numbers in another order, so losses agree
# to 1e-5; Adam divides each update by sqrt(v): on near-zero gradients the all-reduce's fp32
# rounding becomes a visible step (lr 1e-2), so weights agree to 1e-4, not 1e-5 (seen on the
# pre-refactor code too, with torch 2.13 / accelerate 1.15).
# bf16 (autocast; weights and optimizer state fp32): BF16 = 4u = 1.6e-2 (tests/helpers.py) for
# the losses and gradient norms; FSDP2 also rounds the weights it gathers to bf16, within the
# same 2u per side. Adam steps each weight by about lr whatever the size of its gradient, so a
# gradient's relative error becomes its step's, except for a gradient smaller than its rounding
# error (4u of the terms summed into it): its sign, and so its weight's step, may flip (2 lr
# apart). Of a sum of N ~ 100 token terms of either sign, a share ~ 4u sqrt(N) phi(0) = 6% is
# that small (phi(0) = 0.4, a unit normal's density at 0), so the two runs' weight updates lie
# ~ (2/3) sqrt(6%) = 0.17 of their length apart (a flip in one of 3 steps); allowed: 0.3.
# Measured on the AMD EPYC with AVX512-BF16 (2026-12-08): losses 1e-4 to 2.7e-3 apart, gradient
# norms 3e-4 to 6.5e-3, updates 0.02 to 0.12; a run that lost half of each step's batch:
# losses 1.8e-2 to 0.27, gradient norms 0.4, updates 0.97.
TOLERANCE = {"no": {"losses": (1e-5, 1e-6), "grad_norms": (1e-4, 0.0), "weights": (1e-4, 1e-4)},
             "bf16": {"losses": (BF16, 1e-6), "grad_norms": (BF16, 0.0),
                      "updates": 0.3}}


def assert_same_run(two: dict, one: dict, precision: str) -> None:
    """``two`` followed ``one``'s trajectory within ``precision``'s tolerance: losses, gradient
    norms and the trained weights (fp32: each tensor's sum; bf16: the distance of the two
    runs' updates, relative to ``one``'s)."""
    tol = TOLERANCE[precision]
    for key in ("losses", "grad_norms"):
        rel, abs_ = tol[key]
        assert two[key] == pytest.approx(one[key], rel=rel, abs=abs_), key
    if precision == "bf16":
        assert update_distance(two, one) < tol["updates"]
        return
    rel, abs_ = tol["weights"]
    for name, value in one["params"].items():
        assert two["params"][name] == pytest.approx(value, rel=rel, abs=abs_), name


def update_distance(two: dict, one: dict) -> float:
    """|w2 - w1| / |w1 - w0| over every trained weight (w0: where both runs started)."""
    import torch

    a, b = (torch.load(Path(run["dir"]) / "weights.pt") for run in (one, two))
    apart = moved = 0.0
    for name, start in a["start"].items():
        assert torch.equal(b["start"][name], start), name
        apart += float((b["end"][name].double() - a["end"][name].double()).square().sum())
        moved += float((a["end"][name].double() - start.double()).square().sum())
    return (apart / moved) ** 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, world: int, batch_size: int, lora: bool, precision: str,
         loss: str = "sigmoid", tries: int = 3, **cfg) -> dict:
    """Launch the workers in ``precision`` (``no``: fp32, or ``bf16``), never left to auto:
    native bf16 is set to 1 in the runs of 2 processes and 0 in the runs of 1
    (``DPOKIT_NATIVE_BF16``), so auto would pick bf16 on one side of every comparison and fp32
    on the other, on every host. A rendezvous port taken between probing and binding is
    retried."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**cfg, "mixed_precision": precision}
    for _ in range(tries - 1):
        try:
            return _launch(out, world, batch_size, lora, loss, cfg)
        except PortTaken:
            continue
    return _launch(out, world, batch_size, lora, loss, cfg)


class PortTaken(RuntimeError):
    pass


_BASELINES: dict[str, dict] = {}


def _baseline(tmp_path: Path, lora: bool, precision: str, loss: str = "sigmoid",
              **cfg) -> dict:
    """One plain process with the whole batch of 4, what the other runs are compared with:
    run once per configuration in a session (the DDP, FSDP2 and resume tests share theirs)."""
    key = json.dumps([lora, precision, loss, cfg], sort_keys=True)
    if key not in _BASELINES:
        _BASELINES[key] = _run(tmp_path / "one", 1, 4, lora, precision, loss, **cfg)
    return _BASELINES[key]


def _launch(out: Path, world: int, batch_size: int, lora: bool, loss: str, cfg: dict) -> dict:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
                   DPOKIT_NATIVE_BF16="1" if world > 1 else "0")
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
    result = json.loads((out / "result.json").read_text())
    # the run computed in the precision it named; auto would have picked the other side's
    assert result["precision"] == {"no": "fp32", "bf16": "bf16"}[cfg["mixed_precision"]]
    assert result["auto_picks"] == ("bf16" if world > 1 else "fp32")
    # the trained weights stay fp32 and so do their gradients (FSDP2 reduces them in fp32)
    assert result["param_dtypes"] == result["grad_dtypes"] == ["torch.float32"], result
    return {**result, "dir": out}


@pytest.mark.parametrize("lora,loss,precision", [
    (False, "sigmoid", "no"), (True, "sigmoid", "no"), (False, "kto", "no"),
    pytest.param(False, "sigmoid", "bf16", marks=pytest.mark.slow), (True, "sigmoid", "bf16"),
    pytest.param(False, "kto", "bf16", marks=pytest.mark.slow)])
def test_two_processes_equal_one(tmp_path, lora, loss, precision):
    """4 pairs per step: one process with batch 4, or two processes with batch 2 each."""
    one = _baseline(tmp_path, lora, precision, loss)
    two = _run(tmp_path / "two", 2, 2, lora, precision, loss)
    assert (one["world"], two["world"]) == (1, 2)
    assert_same_run(two, one, precision)
    assert one["losses"][-1] != pytest.approx(one["losses"][0], rel=1e-3)  # (it trains)


@pytest.mark.parametrize("lora,precision", [
    (False, "no"), (True, "no"), pytest.param(False, "bf16", marks=pytest.mark.slow),
    (True, "bf16")])
def test_two_fsdp2_processes_equal_one_process(tmp_path, lora, precision):
    """FSDP2 (fully_shard per decoder layer, gloo) in 2 processes with batch 2 each == one
    plain process with batch 4: losses, gradient norms and the updated weights. In bf16 with
    LoRA, FSDP2's first forward is the reference pass with the adapter disabled (peft freezes
    it): the gradients must still come back fp32 (policies/causal_lm/sharding.py)."""
    one = _baseline(tmp_path, lora, precision)
    two = _run(tmp_path / "two", 2, 2, lora, precision, strategy="fsdp")
    alone = _run(tmp_path / "alone", 1, 4, lora, precision, strategy="fsdp")  # a group of 1
    assert two["world"] == 2
    assert_same_run(alone, one, precision)
    assert_same_run(two, one, precision)
    # final/ is an ordinary folder either way: the gathered weights, not shards
    if lora:
        _assert_same_final(one, two, "adapter_model.safetensors", precision)


def _assert_same_final(one: dict, two: dict, file: str, precision: str) -> None:
    """final/ holds whole tensors, and what the runs trained (fp32: to 1e-4 per tensor's sum;
    bf16: the updates are compared in assert_same_run, the shapes here)."""
    from safetensors.torch import load_file

    a, b = (load_file(Path(run["dir"]) / "out" / "final" / file) for run in (one, two))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].shape == a[key].shape, key
        if precision == "no":
            assert b[key].double().sum().item() == pytest.approx(
                a[key].double().sum().item(), rel=1e-4, abs=1e-4), key


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (the README's test "
                                     "command installs it)")


@needs_deepspeed
@pytest.mark.parametrize("stage,lora,accum,precompute,tied,precision", [
    pytest.param(2, False, 1, True, False, "no", marks=pytest.mark.slow),
    (3, False, 2, False, False, "no"), (3, True, 1, True, True, "no"),
    pytest.param(3, False, 2, False, False, "bf16", marks=pytest.mark.slow),
    (3, True, 1, True, True, "bf16")])
def test_two_zero_processes_equal_one_process(tmp_path, stage, lora, accum, precompute, tied,
                                              precision):
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
    one = _baseline(tmp_path, lora, precision, precompute_ref_logps=precompute, tied=tied)
    two = _run(tmp_path / "two", 2, 2 // accum, lora, precision, strategy="deepspeed",
               zero_stage=stage, grad_accum_steps=accum, precompute_ref_logps=precompute,
               tied=tied, deepspeed_config=str(ds))
    assert two["world"] == 2
    assert two["fingerprint"] == one["fingerprint"]  # (was 0.0 from the empty partitions)
    assert_same_run(two, one, precision)
    _assert_same_final(one, two, "adapter_model.safetensors" if lora else "model.safetensors",
                       precision)


# resume == uninterrupted, steps 3-4 after a checkpoint at step 2: in fp32 to 1e-4 (the
# weights' tolerance above, carried through two more steps); in bf16 to 4u, as the losses above,
# and the weights after step 4 as the updates above (both runs start from the same weights)
RESUMED = {"no": (1e-4, 1e-5), "bf16": (BF16, 1e-5)}


@pytest.mark.parametrize("first,then,precision", [
    ((2, "fsdp"), (1, "ddp"), "no"), ((2, "fsdp"), (1, "ddp"), "bf16"),
    pytest.param((1, "ddp"), (2, "fsdp"), "no", marks=pytest.mark.slow),
    pytest.param((2, "deepspeed"), (1, "ddp"), "no", marks=[needs_deepspeed, pytest.mark.slow]),
    pytest.param((1, "ddp"), (2, "deepspeed"), "no", marks=needs_deepspeed),
    pytest.param((1, "ddp"), (2, "deepspeed"), "bf16", marks=[needs_deepspeed,
                                                              pytest.mark.slow])])
def test_a_checkpoint_resumes_on_another_process_count(tmp_path, first, then, precision):
    """Checkpoints hold whole tensors keyed by name: 2 FSDP2 or ZeRO-3 processes -> 1
    process and the reverse continue with the losses of the uninterrupted run."""
    full = _baseline(tmp_path, True, precision, max_steps=4)
    (w1, s1), (w2, s2) = first, then
    out = tmp_path / "split"
    ds = tmp_path / "ds.json"  # ZeRO-3 partitions even the tiny weights (see above)
    ds.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    zero = {"deepspeed_config": str(ds)}
    _run(out, w1, 4 // w1, True, precision, max_steps=4, save_every=2, strategy=s1,
         **(zero if s1 == "deepspeed" else {}))
    shutil.rmtree(out / "out" / "checkpoints" / "step-0000004")  # as if stopped after step 2
    resumed = _run(out, w2, 4 // w2, True, precision, max_steps=4, save_every=2, strategy=s2,
                   resume=True, **(zero if s2 == "deepspeed" else {}))
    assert resumed["steps"] == [3, 4]
    rel, abs_ = RESUMED[precision]
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=rel, abs=abs_)
    assert full["losses"][3] != pytest.approx(full["losses"][0], rel=1e-3)  # (it trains)
    if precision == "bf16":  # 4u is more than LoRA's losses move: the weights say more
        assert update_distance(resumed, full) < TOLERANCE["bf16"]["updates"]


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
