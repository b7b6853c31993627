"""Data larger than memory: rows streamed from JSON Lines shards, tokenized per step. Each
row once per epoch over all processes, a seeded order, exact resume, bounded memory, bad rows
counted, and the same training as the in-memory source on the same order (its plain twin)."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest
from conftest import sentiment_rows, write_jsonl

from dpokit.config import load_config
from dpokit.data.io import DataError, count_jsonl_rows, jsonl_shards, stream_jsonl
from dpokit.runs.causal_lm import build_run
from dpokit.train import StreamingSource


def _source(n: int, world: int = 1, rank: int = 0, seed: int = 0, buffer: int = 8,
            batch: int = 3) -> StreamingSource:
    src = StreamingSource(lambda: iter(range(n)), n, lambda row, i: (row, i), list, batch,
                          grad_accum_steps=2, seed=seed, shuffle_buffer=buffer)
    src.shard(world, rank)
    return src


def _epoch(src: StreamingSource, epoch: int = 0) -> list:
    steps = range(epoch * src.steps_per_epoch, (epoch + 1) * src.steps_per_epoch)
    return [ex for s in steps for mb in src.micro_batches(s) for ex in mb]


def test_every_row_once_per_epoch_over_processes_in_a_seeded_order():
    n = 50
    ranks = [_source(n, world=2, rank=r) for r in range(2)]
    rows = [row for r in ranks for row, _ in _epoch(r)]
    assert sorted(rows) == list(range(n))  # no overlap, nothing lost
    assert all(row == position for r in ranks for row, position in _epoch(r))
    order = [row for row, _ in _epoch(_source(n))]
    assert order == [row for row, _ in _epoch(_source(n))]  # seeded
    assert order != list(range(n)) and order != [row for row, _ in _epoch(_source(n, seed=1))]
    assert order != [row for row, _ in _epoch(_source(n), epoch=1)]  # a new order per epoch
    assert [row for row, _ in _epoch(_source(n, buffer=0))] == list(range(n))


def test_a_step_is_a_pure_function_of_the_step():
    """Resume: a fresh source (after load_state_dict) gives the continued source's batches."""
    going = _source(40)
    batches = [going.micro_batches(s) for s in range(12)]  # crosses an epoch (7 steps each)
    fresh = _source(40)
    fresh.load_state_dict(going.state_dict())
    assert [fresh.micro_batches(s) for s in (5, 6, 7, 11)] == [batches[s] for s in (5, 6, 7, 11)]


def _peak_bytes(path, n: int) -> int:
    path.write_text("".join(json.dumps({"text": f"row {i} " + "x" * 200}) + "\n"
                            for i in range(n)))
    files = jsonl_shards(str(path))
    tracemalloc.start()
    src = StreamingSource(lambda: stream_jsonl(files), count_jsonl_rows(files),
                          lambda row, i: len(row.values["text"]), list, 8, shuffle_buffer=64)
    for step in range(src.steps_per_epoch):
        src.micro_batches(step)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_stays_bounded_as_the_file_grows(tmp_path):
    small = _peak_bytes(tmp_path / "small.jsonl", 2_000)
    large = _peak_bytes(tmp_path / "large.jsonl", 20_000)  # 10x the rows, ~4.5 MB
    assert large < 1.5 * small, (small, large)


def test_shards_globs_and_bad_lines(tmp_path):
    (tmp_path / "shards").mkdir()
    write_jsonl(tmp_path / "shards" / "a.jsonl", [{"i": 0}, {"i": 1}])
    (tmp_path / "shards" / "b.jsonl").write_text('{"i": 2}\nnot json\n\n[1]\n')
    files = jsonl_shards(str(tmp_path / "shards"))
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    assert jsonl_shards(str(tmp_path / "shards" / "*.jsonl")) == files
    rows = list(stream_jsonl(files))
    assert [r.values["i"] for r in rows[:3]] == [0, 1, 2] and count_jsonl_rows(files) == 5
    assert [(e.row, e.reason.split(":")[0]) for e in rows[3:]] == [
        (2, "invalid JSON"), (4, "expected a JSON object per line")]
    with pytest.raises(DataError, match="no JSON Lines shards"):
        jsonl_shards(str(tmp_path / "none-*.jsonl"))


def _cfg(tmp_path, tiny_model_dir, data, name, **kw):
    return load_config(None, **{"model.name": str(tiny_model_dir), "train_data": str(data),
                                "output_dir": str(tmp_path / name), "batch_size": 2,
                                "learning_rate": 1e-2, "log_with": [], "progress_bar": False,
                                "max_length": 64, "max_prompt_length": 32, "lora": False,
                                "mixed_precision": "no",  # (exact comparisons: fp32's)
                                "ref_cache_dir": str(tmp_path / "cache"), **kw})


def test_streaming_trains_as_the_in_memory_source_on_the_same_order(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    static = build_run(_cfg(tmp_path, tiny_model_dir, data, "static", shuffle=False,
                            max_steps=4)).trainer.train().history
    streamed = build_run(_cfg(tmp_path, tiny_model_dir, data, "stream", streaming=True,
                              shuffle_buffer=0, max_steps=4)).trainer.train().history
    assert [h["loss"] for h in streamed] == pytest.approx([h["loss"] for h in static], rel=1e-5)


def test_bad_rows_are_skipped_counted_and_a_step_of_only_bad_rows_makes_no_update(
        tmp_path, tiny_model_dir):
    rows = sentiment_rows(1)
    data = tmp_path / "pairs.jsonl"  # in file order, step 2 takes exactly the two bad rows
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + "{broken\n"
                    + json.dumps({"prompt": "p", "chosen": "a"}) + "\n"
                    + "".join(json.dumps(r) + "\n" for r in rows[2:]))
    common = dict(streaming=True, shuffle_buffer=0, on_bad_rows="skip", max_steps=4)
    with pytest.warns(UserWarning, match="step 2 had no usable rows"):
        history = build_run(_cfg(tmp_path, tiny_model_dir, data, "skip", **common)
                            ).trainer.train().history
    assert "loss" not in history[1] and history[1]["step"] == 2
    # the broken line and the row without `rejected`, each counted once
    assert history[-1]["data/skipped_rows"] == 2
    with pytest.raises(DataError, match=r"pairs\.jsonl, row 3: invalid JSON"):
        build_run(_cfg(tmp_path, tiny_model_dir, data, "strict", streaming=True,
                       max_steps=4)).trainer.train()


def test_streaming_resume_is_exact(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    common = dict(streaming=True, shuffle_buffer=4, max_steps=5, save_every=2)
    whole = build_run(_cfg(tmp_path, tiny_model_dir, data, "whole", **common)).trainer.train()
    build_run(_cfg(tmp_path, tiny_model_dir, data, "split", **common)).trainer.train()
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "step-0000004")  # as if killed at 3
    resumed = build_run(_cfg(tmp_path, tiny_model_dir, data, "split", resume=True,
                             **common)).trainer.train().history
    assert [h["step"] for h in resumed] == [3, 4, 5]
    assert [h["loss"] for h in resumed] == pytest.approx(
        [h["loss"] for h in whole.history[2:]], rel=1e-5)
