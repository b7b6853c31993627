"""Nothing lost, nothing silent: the output folder is one run's, resume checks what it
resumes, corrupt files are survived, signals save a checkpoint, every failure is one line.
Each test here fails on the code before these guarantees (written first, seen failing)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import typing
import warnings

import pytest
import torch
from conftest import sentiment_rows
from helpers import crash_after, tiny_trainer

from dpokit.config import ConfigError, load_config
from dpokit.config.schema import SECTIONS
from dpokit.train import Interrupted, NonFiniteError, ResumeMismatch
from dpokit.train.checkpoint import CorruptCheckpoint
from dpokit.train.folder import LOCK, OutputDirError, RunFolder

# --- the output folder is one run's ----------------------------------------------------------


def test_a_second_run_refuses_a_folder_holding_another_runs_results(tmp_path, tokenizer):
    first = tiny_trainer(tmp_path, tokenizer, max_steps=2, save_every=1)
    first.train()
    first.save_final()
    second = tiny_trainer(tmp_path, tokenizer, max_steps=2, save_every=1)
    with pytest.raises(OutputDirError, match=r"holds another run's checkpoints/ and final/; "
                                             r"resume=true continues"):
        second.train()
    assert sorted(p.name for p in (tmp_path / "out/checkpoints").iterdir()) == [
        "step-0000001", "step-0000002"]  # untouched
    third = tiny_trainer(tmp_path, tokenizer, max_steps=1, overwrite_output_dir=True)
    third.train()
    assert not (tmp_path / "out/checkpoints").exists() and not (tmp_path / "out/final").exists()
    lines = (tmp_path / "out/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1]  # the old run's rows are gone


def test_two_runs_cannot_write_one_folder_at_once_and_stale_locks_are_taken_over(tmp_path):
    folder, other = RunFolder(tmp_path, log=lambda _: None), RunFolder(tmp_path)
    with folder.locked():
        owner = json.loads((tmp_path / LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["host"]
        with pytest.raises(OutputDirError, match=rf"being written by another run \(process "
                                                 rf"{os.getpid()}"):
            with other.locked():
                pass
    assert not (tmp_path / LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    (tmp_path / LOCK).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    messages = []
    with RunFolder(tmp_path, log=messages.append).locked():  # the dead process's lock
        pass
    assert any("taking over the lock" in m for m in messages)


def test_killed_final_swap_keeps_the_old_final(tmp_path, tokenizer, monkeypatch):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=1)
    trainer.train()
    final = trainer.save_final()
    before = (final / "model.safetensors").read_bytes()
    real_replace, calls = os.replace, []

    def killed_midway(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old final/ is aside; "kill -9" before the new one is in
            raise SystemExit("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_midway)
    with pytest.raises(SystemExit):
        trainer.save_final()
    monkeypatch.setattr(os, "replace", real_replace)
    assert not final.exists()  # the moment of the kill
    RunFolder(tmp_path / "out", log=lambda _: None).clean_staging()  # the next start
    assert (final / "model.safetensors").read_bytes() == before
    assert not list((tmp_path / "out").glob(".staging-*"))


# --- resume checks what it resumes -----------------------------------------------------------


def _interrupted_at(tmp_path, tokenizer, step, **cfg):
    crash_after(tiny_trainer(tmp_path, tokenizer, max_steps=6, batch_size=3, save_every=3,
                             **cfg), step)


def test_resume_with_changed_data_or_beta_is_refused_listing_what_differs(tmp_path, tokenizer):
    _interrupted_at(tmp_path, tokenizer, 4)
    other_rows = sentiment_rows(2)[::-1]
    with pytest.raises(ResumeMismatch, match=r"changed: data.fingerprint"):
        tiny_trainer(tmp_path, tokenizer, rows=other_rows, max_steps=6, batch_size=3,
                     resume=True).train()
    with pytest.raises(ResumeMismatch, match=r"loss.beta: 0.1 -> 0.2"):
        tiny_trainer(tmp_path, tokenizer, max_steps=6, batch_size=3, resume=True,
                     beta=0.2).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tiny_trainer(tmp_path, tokenizer, max_steps=6, batch_size=3, resume=True,
                              beta=0.2, resume_allow_changes=True).train()
    assert [m["step"] for m in result.history] == [4, 5, 6]
    assert any("loss.beta: 0.1 -> 0.2" in str(w.message) for w in caught)


def test_metrics_have_each_step_once_after_resume(tmp_path, tokenizer):
    _interrupted_at(tmp_path, tokenizer, 4)  # rows 1..4 written, checkpoint at 3
    tiny_trainer(tmp_path, tokenizer, max_steps=6, batch_size=3, resume=True).train()
    text = (tmp_path / "out/metrics.jsonl").read_text()
    steps = [json.loads(x)["step"] for x in text.splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=4, batch_size=3, save_every=2,
                           keep_checkpoints=2)
    trainer.train()
    weights = tmp_path / "out/checkpoints/step-0000004/trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = tiny_trainer(tmp_path, tokenizer, max_steps=4, batch_size=3, resume=True)
        result = resumed.train()
    assert any("step-0000004/trainable.safetensors is corrupt" in str(w.message)
               for w in caught)
    assert [m["step"] for m in result.history] == [3, 4]  # from step 2
    state = tmp_path / "out/checkpoints/step-0000002/optimizer.pt"
    state.write_bytes(b"garbage")
    weights.unlink()
    with pytest.raises(CorruptCheckpoint, match=r"no usable checkpoint .* \(all 2 are corrupt"):
        tiny_trainer(tmp_path, tokenizer, max_steps=4, batch_size=3, resume=True).train()


def test_truncated_reference_cache_is_reported_and_recomputed(tmp_path, tokenizer):
    cache = tmp_path / "cache"
    first = tiny_trainer(tmp_path / "1", tokenizer, max_steps=1, precompute_ref_logps=True,
                         ref_cache_dir=str(cache))
    first.train()
    [cached] = cache.glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:50])
    messages = []
    second = tiny_trainer(tmp_path / "2", tokenizer, max_steps=1, precompute_ref_logps=True,
                          ref_cache_dir=str(cache))
    second.log = second.reference.log = messages.append
    second.train()
    assert any("is corrupt (unreadable" in m and "recomputing" in m for m in messages)
    torch.testing.assert_close(second.reference.tables["train"].values,
                               first.reference.tables["train"].values)
    values = torch.load(cached, weights_only=True)
    values["values"][0, 0] += 1.0  # altered, not truncated
    torch.save(values, cached)
    third = tiny_trainer(tmp_path / "3", tokenizer, max_steps=1, precompute_ref_logps=True,
                         ref_cache_dir=str(cache))
    third.log = third.reference.log = messages.append
    third.train()
    assert any("checksum mismatch" in m for m in messages)


def test_reference_cache_key_covers_every_token_id(tmp_path, tokenizer):
    """Same number of rows, one word changed: another key, not stale reference log-probs."""
    cache = tmp_path / "cache"
    rows = sentiment_rows(1)
    tiny_trainer(tmp_path / "1", tokenizer, rows=rows, max_steps=1, precompute_ref_logps=True,
                 ref_cache_dir=str(cache)).train()
    changed = [dict(r) for r in rows]
    changed[5]["chosen"] += " too"
    assert changed != rows
    tiny_trainer(tmp_path / "2", tokenizer, rows=changed, max_steps=1, precompute_ref_logps=True,
                 ref_cache_dir=str(cache)).train()
    assert len(list(cache.glob("*.pt"))) == 2


# --- signals -----------------------------------------------------------------------------------


def test_a_second_ctrl_c_stops_at_once(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=1000)
    original = trainer._train_step

    def step():
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # first: stop after this step
            os.kill(os.getpid(), signal.SIGINT)  # second: at once
        return original()

    trainer._train_step = step
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN in a background job, e.g. nohup)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not (tmp_path / "out/checkpoints").exists()  # it did not wait for a save
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored


def test_one_sigint_in_process_raises_interrupted_with_a_checkpoint(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=1000)
    original = trainer._train_step

    def step():
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original()

    trainer._train_step = step
    with pytest.raises(Interrupted) as stop:
        trainer.train()
    assert stop.value.exit_code == 130 and stop.value.step == 3
    assert stop.value.checkpoint.name == "step-0000003" and stop.value.checkpoint.is_dir()


# --- config ranges -------------------------------------------------------------------------------


def _out_of_range():
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            domain = f.metadata.get("domain")
            if domain is None:
                continue
            value = domain.low - 1 if math.isfinite(domain.low) else domain.high + 1
            if not domain.low_inclusive and math.isfinite(domain.low):
                value = domain.low
            hint = typing.get_type_hints(cls)[f.name]
            if hint is int or int in typing.get_args(hint):
                value = int(value)
            yield pytest.param(section, f.name, value, id=f"{section}.{f.name}")


@pytest.mark.parametrize("section,name,value", list(_out_of_range()))
def test_every_numeric_field_is_range_checked(section, name, value):
    with pytest.raises(ConfigError, match=rf"{name} must be"):
        load_config(None, [f"{section}.{name}={value}"])


def test_defaults_name_no_dataset_and_eval_fraction_needs_no_clearing():
    cfg = load_config(None, ["train_data=mine.jsonl", "eval_fraction=0.2"])
    assert cfg.data.eval_data is None and cfg.data.eval_fraction == 0.2
    assert load_config(None).data.train_data is None


# --- planted bugs the suite must catch ------------------------------------------------------------


def test_nonfinite_guard_runs_before_the_optimizer_step(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=3)
    spec = trainer.objective.specs[0]
    snapshot = {}

    def poisoned(*args):
        out = spec.fn(*args)
        if trainer.step == 1:
            snapshot.update({n: p.detach().clone()
                             for n, p in trainer.policy.model.named_parameters()})
            return out._replace(losses=out.losses * float("nan"))
        return out

    trainer.objective.specs[0] = dataclasses.replace(spec, fn=poisoned)
    with pytest.raises(NonFiniteError):
        trainer.train()
    for name, p in trainer.policy.model.named_parameters():
        assert torch.equal(p.detach(), snapshot[name]), name  # the step never happened


@pytest.mark.parametrize("name", sorted({s.name for s in __import__(
    "dpokit.losses", fromlist=["x"]).available_losses().values()}))
def test_every_registered_loss_returns_detached_rewards(name):
    """All four inputs require grad; no loss may hand back a reward attached to the graph."""
    from dpokit.losses import LossParams, get_loss

    spec = get_loss(name)
    c, r, rc, rr = (torch.tensor([-1.0, -2.0], requires_grad=True) for _ in range(4))
    refs = (rc, rr) if spec.needs_reference else (None, None)
    extras = {"label": torch.tensor([1.0, 0.0]), "offset": torch.tensor([0.5, 0.5]),
              "chosen_tokens": torch.tensor([3.0, 4.0]),
              "rejected_tokens": torch.tensor([2.0, 5.0]),
              "level_obeyed": torch.tensor([0.0, 1.0]),
              "level_overridden": torch.tensor([3.0, 1.0])}
    out = spec.fn(c, r, *refs, LossParams(label_smoothing=0.1), extras)
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


