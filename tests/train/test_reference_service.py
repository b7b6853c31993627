"""The reference service on its own, with a fake policy whose reference score of a sequence is
known (-(10·example + sequence)): the table's batch order, the pass over a plan (skipping
finished batches, stopping between two), the partial and cached files (atomic, checksummed,
corrupt ones recomputed), the cache key, precomputed scores against a forward pass, the
refusals, and TR-DPO's sync schedule. fp32; no model."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch

from dpokit.core.protocols import PolicyCapabilities
from dpokit.train.reference import (
    CACHE_VERSION,
    PartialTable,
    ReferenceService,
    ReferenceTable,
    cache_key,
    compute_reference_table,
    load_or_compute,
    read_partial,
    reference_precision,
    save_partial,
)


class Batch:
    def __init__(self, indices):
        self.example_index = torch.tensor(indices)
        self.ref_logps = None

    def to(self, device):
        return self


def score(index: torch.Tensor, k: int = 2) -> torch.Tensor:
    """(K·E,) the fake reference's scores: chosen of every example, then rejected."""
    return torch.cat([-(10.0 * index + s) for s in range(k)])


class FakePolicy:
    def __init__(self, **caps):
        self.capabilities = PolicyCapabilities(**{"reference": "copy", **caps})
        self.calls, self.synced = [], []

    def reference_logps(self, batch):
        self.calls.append(batch.example_index.tolist())
        return types.SimpleNamespace(logps=score(batch.example_index).double())

    def fingerprint(self):
        return "weights-1"

    def sync_reference(self, alpha):
        self.synced.append(alpha)


def collate(items):
    return Batch(items)


DATASET = list(range(5))
PLAN = [[3, 1], [0], [4, 2]]
EXPECTED = torch.stack([-(10.0 * torch.arange(5)), -(10.0 * torch.arange(5) + 1)], dim=1)


def compute(policy, **kw):
    return compute_reference_table(policy, DATASET, collate, PLAN, torch.device("cpu"),
                                   torch.no_grad, **kw)


def test_the_table_gives_chosen_then_rejected_in_batch_order():
    table = ReferenceTable(EXPECTED.clone())
    got = table.lookup(torch.tensor([4, 0, 2]))
    torch.testing.assert_close(got, score(torch.tensor([4, 0, 2])).float())
    assert got.dtype == torch.float32


def test_a_pass_over_the_plan_fills_every_example_once_in_fp32():
    policy = FakePolicy()
    table = compute(policy)
    assert policy.calls == PLAN
    assert table.values.dtype == torch.float32 and table.values.shape == (5, 2)
    torch.testing.assert_close(table.values, EXPECTED)
    assert compute_reference_table(policy, DATASET, collate, [], torch.device("cpu"),
                                   torch.no_grad).values.shape == (5, 2)  # nothing to do


def test_finished_batches_are_skipped_and_an_examples_missing_batch_stays_zero():
    policy = FakePolicy()
    partial = PartialTable(EXPECTED.clone() * 0 + 7.0, {0, 2})
    table = compute(policy, partial=partial)
    assert policy.calls == [[0]] and partial.done == {0, 1, 2}
    assert table.values[0].tolist() == [0.0, -1.0] and table.values[3].tolist() == [7.0, 7.0]
    other = compute_reference_table(FakePolicy(), DATASET, collate, [[1]],
                                    torch.device("cpu"), torch.no_grad)
    assert other.values[1].tolist() == [-10.0, -11.0] and other.values[0].tolist() == [0, 0]


def test_a_stop_request_ends_the_pass_between_batches_keeping_what_was_done(monkeypatch):
    from dpokit.core import signals

    policy, kept = FakePolicy(), []
    steps = iter([False, True])
    real = signals.stop_point

    def stop_after_one(phase, kept="nothing was saved"):
        if next(steps):
            raise signals.Interrupted(15, phase=phase, kept=kept() if callable(kept) else kept)
        return real(phase, kept)

    monkeypatch.setattr("dpokit.train.reference.stop_point", stop_after_one)
    partial = PartialTable()
    with pytest.raises(signals.Interrupted, match="kept 1"):
        compute(policy, partial=partial,
                on_stop=lambda p: kept.append(set(p.done)) or f"kept {len(p.done)}")
    assert kept == [{0}] and policy.calls == [[3, 1]]


def test_partial_files_round_trip_and_a_corrupt_one_starts_over(tmp_path):
    path = tmp_path / "deep" / "k.partial.pt"
    save_partial(PartialTable(EXPECTED.clone(), {2, 0}), path)
    back = read_partial(path)
    torch.testing.assert_close(back.values, EXPECTED)
    assert back.done == {0, 2} and not list(path.parent.glob("*.tmp"))
    save_partial(PartialTable(), path)
    assert read_partial(path).values is None and read_partial(path).done == set()
    assert read_partial(tmp_path / "absent.pt").done == set()
    path.write_bytes(path.read_bytes()[:40])
    assert read_partial(path).done == set() and read_partial(path).values is None


def test_an_altered_partial_file_fails_its_checksum(tmp_path):
    path = tmp_path / "k.partial.pt"
    save_partial(PartialTable(EXPECTED.clone(), {1}), path)
    saved = torch.load(path, weights_only=True)
    saved["values"][0, 0] += 1.0
    torch.save(saved, path)
    assert read_partial(path).done == set()


def test_the_cached_table_is_reused_and_a_corrupt_one_recomputed(tmp_path):
    lines, calls = [], []

    def make():
        calls.append(1)
        return ReferenceTable(EXPECTED.clone())

    first = load_or_compute(tmp_path / "cache", "key1", make, lines.append)
    second = load_or_compute(tmp_path / "cache", "key1", make, lines.append)
    assert len(calls) == 1 and torch.equal(first.values, second.values)
    assert lines[0].startswith("reference log-probs: cached in") and "reusing" in lines[1]
    assert (tmp_path / "cache" / "key1.pt").is_file()
    (tmp_path / "cache" / "key1.pt").write_bytes(b"garbage")
    third = load_or_compute(tmp_path / "cache", "key1", make, lines.append)
    assert len(calls) == 2 and "is corrupt" in lines[2] and "recomputing" in lines[2]
    torch.testing.assert_close(third.values, EXPECTED)
    load_or_compute(None, "key1", make, lines.append)  # no cache: always computed, no file
    assert len(calls) == 3 and len(lines) == 4


def test_the_cache_key_hashes_every_part_and_the_version():
    key = cache_key("a", "b")
    assert len(key) == 32 and key == cache_key("a", "b")
    assert key != cache_key("a", "c") and key != cache_key("b", "a") and key != cache_key("a")
    import hashlib

    assert key == hashlib.sha256(f"a\nb\n{CACHE_VERSION}".encode()).hexdigest()[:32]


def test_the_reference_precision_follows_training_unless_set():
    assert reference_precision("auto", "bf16") == "bf16"
    assert reference_precision("fp32", "fp16") == "fp32"


def settings(**kw):
    from dpokit.config.schema import LossConfig

    return LossConfig(**{"ref_cache_dir": None, **kw})


def accelerator():
    return types.SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))


def objective(needs_reference=True):
    return types.SimpleNamespace(needs_reference=needs_reference, name="sigmoid")


def source(fingerprint="data-1"):
    return types.SimpleNamespace(precomputable=True, dataset=DATASET, collate=collate,
                                 reference_plan=lambda: PLAN, fingerprint=fingerprint,
                                 collate_key="padded")


def test_precomputed_scores_equal_a_forward_pass_and_are_cached(tmp_path):
    policy = FakePolicy(fingerprint=True)
    service = ReferenceService(policy, objective(), settings(ref_cache_dir=str(tmp_path)),
                               accelerator(), torch.no_grad, "fp32", log=lambda _: None)
    assert service.precompute
    forward = service.scores(Batch([4, 2]), "train")  # no table yet: a forward pass
    assert forward.dtype == torch.float32 and policy.calls == [[4, 2]]
    service.prepare("train", source())
    assert policy.calls[1:] == PLAN and len(list(tmp_path.glob("*.pt"))) == 1
    service.prepare("train", source())  # prepared already: nothing again
    assert len(policy.calls) == 4
    batch = Batch([4, 2])
    torch.testing.assert_close(service.scores(batch, "train"), forward)
    assert batch.ref_logps is not None and len(policy.calls) == 4  # read from the table
    again = ReferenceService(policy, objective(), settings(ref_cache_dir=str(tmp_path)),
                             accelerator(), torch.no_grad, "fp32", log=lambda _: None)
    again.prepare("train", source())  # another run, same weights and data: the file
    assert len(policy.calls) == 4
    other = ReferenceService(policy, objective(), settings(ref_cache_dir=str(tmp_path)),
                             accelerator(), torch.no_grad, "bf16", log=lambda _: None)
    other.prepare("train", source())  # another precision: another key
    assert len(policy.calls) == 7 and len(list(tmp_path.glob("*.pt"))) == 2
    assert not list(tmp_path.glob("*.partial.pt"))


def test_what_is_not_precomputed(tmp_path):
    policy = FakePolicy()
    off = ReferenceService(policy, objective(), settings(precompute_ref_logps=False),
                           accelerator(), torch.no_grad, "fp32")
    off.prepare("train", source())
    assert not off.precompute and policy.calls == [] and off.tables == {}
    free = ReferenceService(FakePolicy(reference="none"), objective(False), settings(),
                            accelerator(), torch.no_grad, "fp32")
    assert not free.precompute and free.scores(Batch([0]), "train") is None
    unfingered = ReferenceService(policy, objective(), settings(ref_cache_dir=str(tmp_path)),
                                  accelerator(), torch.no_grad, "fp32", log=lambda _: None)
    unfingered.prepare("eval", source())  # computed, but no file: the scores are not keyed
    assert "eval" in unfingered.tables and not list(tmp_path.glob("*.pt"))
    online = ReferenceService(policy, objective(), settings(), accelerator(), torch.no_grad,
                              "fp32")
    online.prepare("train", types.SimpleNamespace(precomputable=False))
    online.prepare("eval", None)
    assert online.tables == {}


def test_the_service_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="needs a reference model"):
        ReferenceService(FakePolicy(reference="none"), objective(), settings(), accelerator(),
                         torch.no_grad, "fp32")
    with pytest.raises(ValueError, match="reference_sync"):
        ReferenceService(FakePolicy(), objective(), settings(ref_sync=True), accelerator(),
                         torch.no_grad, "fp32")
    with pytest.raises(ValueError, match="cannot be precomputed"):
        ReferenceService(FakePolicy(deterministic=False), objective(), settings(),
                         accelerator(), torch.no_grad, "fp32")
    ReferenceService(FakePolicy(deterministic=False), objective(),
                     settings(precompute_ref_logps=False), accelerator(), torch.no_grad, "fp32")


def test_tr_dpo_syncs_every_ref_sync_every_steps_with_its_alpha():
    policy = FakePolicy(reference_sync=True)
    service = ReferenceService(policy, objective(), settings(
        ref_sync=True, ref_sync_every=3, ref_sync_alpha=0.4, precompute_ref_logps=False),
        accelerator(), torch.no_grad, "fp32")
    for step in range(1, 8):
        service.after_step(step)
    assert policy.synced == [0.4, 0.4]
    quiet = FakePolicy(reference_sync=True)
    ReferenceService(quiet, objective(), settings(ref_sync_every=1), accelerator(),
                     torch.no_grad, "fp32").after_step(1)
    assert quiet.synced == []


# --- what tools/mutate.py found unpinned in reference.py ------------------------------------


def test_files_are_written_beside_their_target_then_renamed(tmp_path, monkeypatch):
    import tempfile

    from dpokit.train import reference

    made = []
    real = tempfile.mkstemp

    def spy(*args, **kw):
        made.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(reference.tempfile, "mkstemp", spy)
    path = tmp_path / "two" / "levels" / "k.partial.pt"
    save_partial(PartialTable(EXPECTED.clone(), {1}), path)
    save_partial(PartialTable(EXPECTED.clone(), {1, 2}), path)  # the folder exists now
    assert made == [{"dir": path.parent, "suffix": ".tmp"}] * 2  # same folder: an atomic rename
    assert read_partial(path).done == {1, 2} and sorted(p.name for p in path.parent.iterdir()) \
        == ["k.partial.pt"]


def test_a_cache_file_holding_other_python_objects_is_not_loaded(tmp_path):
    """Cache files are read with ``weights_only``: a pickled object is refused (recomputed),
    even with a valid checksum."""
    from dpokit.train.reference import _checksum

    path = tmp_path / "key.pt"
    values = EXPECTED.clone()
    torch.save({"values": values, "sha256": _checksum(values), "extra": types.SimpleNamespace()},
               path)
    lines, calls = [], []
    load_or_compute(tmp_path, "key", lambda: calls.append(1) or ReferenceTable(values),
                    lines.append)
    assert calls == [1] and "is corrupt (unreadable" in lines[0]


def test_the_forward_pass_runs_without_gradient():
    class Tracking(FakePolicy):
        def reference_logps(self, batch):
            self.grad = torch.is_grad_enabled()
            return super().reference_logps(batch)

    policy = Tracking()
    service = ReferenceService(policy, objective(), settings(precompute_ref_logps=False),
                               accelerator(), contextlib.nullcontext, "fp32")
    service.scores(Batch([1]), "train")
    assert policy.grad is False


def test_an_interrupted_pass_is_kept_and_the_next_prepare_resumes_it(tmp_path, monkeypatch):
    from dpokit.core import signals
    from dpokit.train import reference

    policy, lines = FakePolicy(fingerprint=True), []
    calls = iter([False, True])
    real = reference.stop_point

    def stop_second(phase, kept="nothing was saved"):
        if next(calls, False):
            raise signals.Interrupted(15, phase=phase, kept=kept() if callable(kept) else kept)
        return real(phase, kept)

    monkeypatch.setattr(reference, "stop_point", stop_second)
    service = ReferenceService(policy, objective(), settings(ref_cache_dir=str(tmp_path)),
                               accelerator(), torch.no_grad, "fp32", log=lines.append)
    with pytest.raises(signals.Interrupted, match="kept 1 of 3 train reference batches in"):
        service.prepare("train", source())
    [partial] = tmp_path.glob("*.partial.pt")
    assert policy.calls == [PLAN[0]] and read_partial(partial).done == {0}
    service.prepare("train", source())
    assert policy.calls[1:] == PLAN[1:]  # only the others
    assert any("(1 batches kept from an interrupted pass)" in line for line in lines)
    assert not list(tmp_path.glob("*.partial.pt")) and len(list(tmp_path.glob("*.pt"))) == 1
    torch.testing.assert_close(service.tables["train"].values, EXPECTED)
    calls = iter([False, True])
    plain = ReferenceService(FakePolicy(), objective(), settings(ref_cache_dir=str(tmp_path)),
                             accelerator(), torch.no_grad, "fp32", log=lines.append)
    with pytest.raises(signals.Interrupted, match="no reference batch was kept"):
        plain.prepare("eval", source())  # unkeyed scores: nothing can be kept
    assert not list(tmp_path.glob("*.partial.pt"))
    assert not any("batches kept" in line for line in lines[-2:])


def test_with_several_processes_each_ones_batches_are_summed(tmp_path):
    reduced = []

    def reduce(t, how):
        reduced.append(how)
        return t * 2

    two = types.SimpleNamespace(num_processes=2, process_index=1, device=torch.device("cpu"),
                                reduce=reduce)
    service = ReferenceService(FakePolicy(), objective(), settings(), two, torch.no_grad, "fp32",
                               log=lambda _: None)
    service.prepare("train", source(fingerprint=None))
    assert reduced == ["sum"]
    torch.testing.assert_close(service.tables["train"].values, 2 * EXPECTED)
    one = ReferenceService(FakePolicy(), objective(), settings(), accelerator(), torch.no_grad,
                           "fp32", log=lambda _: None)
    one.prepare("train", source(fingerprint=None))  # one process: no reduce to call
    torch.testing.assert_close(one.tables["train"].values, EXPECTED)


def test_the_default_cache_folder_is_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    service = ReferenceService(FakePolicy(fingerprint=True), objective(), settings(),
                               accelerator(), torch.no_grad, "fp32", log=lambda _: None)
    service.prepare("train", source())
    assert len(list((tmp_path / "ref_logps").glob("*.pt"))) == 1


def test_tr_dpo_syncs_at_multiples_of_ref_sync_every():
    policy = FakePolicy(reference_sync=True)
    service = ReferenceService(policy, objective(), settings(
        ref_sync=True, ref_sync_every=3, precompute_ref_logps=False), accelerator(),
        torch.no_grad, "fp32")
    at = []
    for step in range(1, 10):
        before = len(policy.synced)
        service.after_step(step)
        if len(policy.synced) > before:
            at.append(step)
    assert at == [3, 6, 9]
