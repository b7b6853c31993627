"""The generic loop with sources and policies other than the text ones: an online source
whose batches depend on the policy, a policy whose scores are random per call; and the
loop's services (batch-level warning, trackers, push_to_hub, dropout, layering)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_tiny_llama
from helpers import tiny_config, tiny_trainer
from test_policy_interface import N_CONTEXTS, N_ITEMS, ItemBatch, RecommenderPolicy, favourite

from dpokit.core import PolicyCapabilities, SequenceScores
from dpokit.objectives import build_objective
from dpokit.train import EvalSet, StaticSource, make_trainer


class OnlineItemSource:
    """Each step, sample items from the *current* policy and pair the user's favourite against
    the policy's own pick (on-policy negatives), as online DPO does. Its generator state is
    its resumable state."""

    steps_per_epoch = None
    precomputable = False
    fingerprint = None

    def __init__(self, seed: int = 0, batch_size: int = 8):
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_size = batch_size
        self.drawn = 0

    def shard(self, world: int, rank: int) -> None:
        pass

    @torch.no_grad()
    def micro_batches(self, step: int, policy) -> list[ItemBatch]:
        contexts = torch.randint(N_CONTEXTS, (self.batch_size,), generator=self.generator)
        probs = torch.softmax(policy.model.logits[contexts].detach(), -1)  # (B, items)
        picks = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)  # (B,)
        best = torch.tensor([favourite(int(c)) for c in contexts])
        picks = torch.where(picks == best, (picks + 1) % N_ITEMS, picks)
        index = torch.arange(self.drawn, self.drawn + self.batch_size)
        self.drawn += self.batch_size
        return [ItemBatch(contexts, best, picks, index)]

    def step_metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = state["drawn"]


def _online_trainer(tmp_path, **cfg):
    config = tiny_config(tmp_path, **{"learning_rate": 0.05, "beta": 0.5, "max_steps": 40, **cfg})
    return make_trainer(config, RecommenderPolicy(), build_objective(config.loss),
                        OnlineItemSource(), log=lambda _: None)


def test_online_source_trains_on_the_policys_own_samples(tmp_path):
    trainer = _online_trainer(tmp_path)
    result = trainer.train()
    probs = torch.softmax(trainer.policy.model.logits.detach(), -1)
    assert all(int(probs[c].argmax()) == favourite(c) for c in range(N_CONTEXTS))
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_online_source_resumes_exactly(tmp_path):
    """Its sampler state goes into the checkpoint: interrupted + resumed == uninterrupted."""
    full = _online_trainer(tmp_path / "a", max_steps=6).train()
    first = _online_trainer(tmp_path / "b", max_steps=6, save_every=3)
    first.total_steps = 3
    first.train()
    resumed = _online_trainer(tmp_path / "b", max_steps=6, resume=True).train()
    assert [m["step"] for m in resumed.history] == [4, 5, 6]
    assert [m["loss"] for m in resumed.history] == pytest.approx(
        [m["loss"] for m in full.history[3:]], rel=1e-6)


def test_online_source_without_max_steps_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(ValueError, match="no epochs .* set max_steps"):
        make_trainer(config, RecommenderPolicy(), build_objective(config.loss), OnlineItemSource())


class NoisyPolicy(RecommenderPolicy):
    """Scores carry fresh noise on every call (as a diffusion policy's random timesteps)."""

    capabilities = PolicyCapabilities(reference="copy", deterministic=False)

    def _logps(self, module, batch) -> SequenceScores:
        clean = super()._logps(module, batch)
        return SequenceScores(clean.logps + 0.01 * torch.randn_like(clean.logps), clean.tokens)


def test_random_scores_policy_refuses_precompute_and_trains_without_it(tmp_path):
    from test_policy_interface import collate_items, item_pairs

    config = tiny_config(tmp_path, precompute_ref_logps=True, learning_rate=0.05, beta=0.5,
                         num_epochs=5, batch_size=8)
    source = StaticSource(item_pairs(0, 64), collate_items, batch_size=8)
    with pytest.raises(ValueError, match="differently on every call .* precompute_ref_logps=false"):
        make_trainer(config, NoisyPolicy(), build_objective(config.loss), source)
    config = tiny_config(tmp_path, precompute_ref_logps=False, learning_rate=0.05, beta=0.5,
                         num_epochs=5, batch_size=8)
    policy = NoisyPolicy()
    trainer = make_trainer(config, policy, build_objective(config.loss), source,
                           EvalSet(item_pairs(1, 32), collate_items, 8), log=lambda _: None)
    result = trainer.train()
    assert result.eval_history[-1]["eval/rewards/accuracies"] == 1.0


def test_capabilities_are_declared_not_probed(tmp_path):
    """A policy without reference_sync is refused for TR-DPO by its declaration."""
    config = tiny_config(tmp_path, ref_sync=True, precompute_ref_logps=False)
    from test_policy_interface import collate_items, item_pairs

    with pytest.raises(ValueError, match="declares reference_sync"):
        make_trainer(config, RecommenderPolicy(), build_objective(config.loss),
                     StaticSource(item_pairs(0, 8), collate_items, 8))
    with pytest.raises(NotImplementedError, match="capability 'generation'"):
        RecommenderPolicy().generate(["hi"])


@pytest.mark.parametrize("loss,accum,warns", [("aot", 2, True), ("aot", 1, False),
                                               ("kto", 2, True), ("sigmoid", 2, False)])
def test_batch_level_loss_warns_once_under_accumulation(tmp_path, tokenizer, loss, accum, warns):
    from conftest import sentiment_rows, unpaired_rows

    rows = unpaired_rows(sentiment_rows()) if loss == "kto" else None
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, tokenizer, loss=loss, grad_accum_steps=accum, rows=rows)
    texts = [str(w.message) for w in record]
    ours = [t for t in texts if "is batch-level" in t]
    assert len(ours) == (1 if warns else 0), texts
    if warns:
        assert f"loss '{loss}'" in ours[0] and "2 accumulated micro-batches" in ours[0]


def test_metrics_reach_accelerate_trackers(tmp_path, tokenizer):
    from accelerate.tracking import GeneralTracker

    class Recording(GeneralTracker):
        name, requires_logging_directory = "recording", False

        def __init__(self):
            super().__init__()
            self.rows, self.config = [], None

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, dict(values)))

    recording = Recording()
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=2)
    from dpokit.train.strategy import make_accelerator

    config = trainer.cfg
    trainer = make_trainer(config, trainer.policy, trainer.objective, trainer.source,
                           accelerator=make_accelerator([recording], str(tmp_path)),
                           log=lambda _: None)
    trainer.train()
    trainer.close()
    assert [step for step, _ in recording.rows] == [1, 2]
    assert "loss" in recording.rows[0][1] and "rewards/margins" in recording.rows[0][1]
    assert recording.config["loss.beta"] == 0.1  # flat section.key hyper-parameters
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2


def test_push_to_hub_offline_is_one_clear_line(tmp_path, tokenizer, monkeypatch):
    from dpokit.train.checkpoint import PushError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=1, push_to_hub="me/tiny-dpo")
    trainer.train()
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set, so nothing was uploaded"):
        trainer.save_final()
    assert (tmp_path / "out" / "final" / "README.md").is_file()  # saved before the upload


@pytest.mark.parametrize("disable", [True, False])
def test_dropout_disabled_makes_policy_and_reference_agree(tokenizer, disable):
    from dpokit.data.text import TokenizedPair, collate_pairs
    from dpokit.policies.causal_lm import CausalLMPolicy
    from dpokit.policies.causal_lm.models import disable_dropout

    model = make_tiny_llama(len(tokenizer), attention_dropout=0.5)
    model.model.layers[0].mlp.add_module("drop", torch.nn.Dropout(0.5))  # an nn.Dropout too
    model.model.layers[0].mlp.down_proj.register_forward_pre_hook(
        lambda m, args: (model.model.layers[0].mlp.drop(args[0]),))
    if disable:
        assert disable_dropout(model) == 3  # 2 attention layers + 1 nn.Dropout
    policy = CausalLMPolicy(model, reference="copy")
    policy.train(True)
    batch = collate_pairs([TokenizedPair(0, [5, 6, 7], [8, 9], [10, 11])], 0)
    torch.manual_seed(0)
    same = torch.allclose(policy.logps(batch).logps, policy.reference_logps(batch).logps)
    assert same == disable


def test_sampling_norm_chunked_equals_full_logits(tokenizer):
    """WPO's per-token log sum_v p(v)^2: the chunked head's value against full logits."""
    from dpokit.data.text import TokenizedPair, collate_pairs
    from dpokit.policies.causal_lm import CausalLMPolicy

    model = make_tiny_llama(len(tokenizer))
    batch = collate_pairs([TokenizedPair(0, [5, 6, 7], [8, 9, 2], [10, 2])], 0)
    scores = CausalLMPolicy(model, chunk_size=2).logps(batch, sampling_norm=True)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits.float(), -1).reshape(-1, logits.shape[-1])[batch.score_source]
    per_token = torch.logsumexp(2 * logp, -1)  # (N,) log sum p^2
    expected = torch.zeros(2).index_add(0, batch.score_sequence, per_token)
    torch.testing.assert_close(scores.sampling_norm, expected, atol=1e-5, rtol=1e-5)
    assert not scores.sampling_norm.requires_grad


def test_static_source_orders_each_epoch_differently_and_shards_exactly():
    """Each epoch is a fresh seeded permutation (not the same order again), steps cover every
    example once per epoch, and 2 processes split each step into disjoint halves."""
    data = list(range(10))
    src = StaticSource(data, collate=list, batch_size=2, grad_accum_steps=1, seed=3)
    epochs = [[i for s in range(e * 5, e * 5 + 5) for mb in src.step_indices(s)[0] for i in mb]
              for e in range(3)]
    assert all(sorted(order) == data for order in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] == [i for s in range(5) for mb in StaticSource(
        data, list, 2, seed=3).step_indices(s)[0] for i in mb]  # a pure function of (seed, step)
    halves = []
    for rank in (0, 1):
        part = StaticSource(data, list, batch_size=1, seed=3)
        part.shard(2, rank)
        halves.append([i for mb in part.step_indices(0)[0] for i in mb])
    assert set(halves[0]).isdisjoint(halves[1])
    assert sorted(halves[0] + halves[1]) == sorted(src.step_indices(0)[0][0])
