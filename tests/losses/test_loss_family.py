"""The loss family end to end on tiny models, and the modifiers that live outside the losses."""

import pytest
import torch
from conftest import held_out_rows, sentiment_rows, unpaired_rows
from helpers import tiny_trainer

from dpokit.data import DataError
from dpokit.data.io import Record
from dpokit.data.text import TokenizedPair, TokenizeSettings, build_unpaired, collate_pairs
from dpokit.policies.causal_lm import CausalLMPolicy, ld_token_weights
from dpokit.policies.causal_lm.scoring import sampo_token_weights


@torch.no_grad()
def pairwise_accuracy(trainer, tokenizer, rows, use_reference: bool):
    """Held-out preference accuracy: reward ranking (with a reference) or the policy's own
    per-token log-prob ranking (reference-free losses)."""
    from helpers import tiny_pairs

    pairs = tiny_pairs(tokenizer, rows)
    batch = collate_pairs(pairs.pairs, pad_token_id=tokenizer.pad_token_id)
    trainer.policy.train(False)
    out = trainer.policy.logps(batch).pairs()
    if use_reference:
        ref = trainer.policy.reference_logps(batch).pairs()
        margin = (out.chosen - ref.chosen) - (out.rejected - ref.rejected)
    else:
        margin = out.chosen / out.chosen_tokens - out.rejected / out.rejected_tokens
    return float((margin > 0).float().mean())


FAMILIES = [
    ("exo_pair", {}),
    ("nca_pair", {}),
    ("bco_pair", {}),
    ("sppo_hard", {"beta": 1.0}),
    ("aot", {}),
    ("aot_unpaired", {}),
    ("apo_zero", {}),
    ("discopop", {"beta": 1.0}),  # β·h must cross its bump near 0 ("sigmoid_norm", {"beta": 1.0}),
    ("rdpo", {}),
    ("cpo", {}),
    ("orpo", {"beta": 1.0}),
    ("ipo_norm", {"beta": 1.0}),
    (["sigmoid", "sft"], {"loss_weights": [1.0, 0.2]}),
    ("sigmoid", {"wpo": "paper", "learning_rate": 3e-3}),
    ("sigmoid", {"wpo": "mean", "learning_rate": 3e-3}),
    ("sigmoid", {"f_divergence": "js"}),
    ("sigmoid", {"ld_alpha": 0.5}),
    ("sigmoid", {"sampo": True}),
    ("beta_dpo", {}),
    ("dpop", {}),
    ("cal_dpo", {}),
    ("simper", {}),
    ("alphapo", {"beta": 1.0}),
    ("kto", {}),
    ("apo_zero_unpaired", {}),
]


@pytest.mark.parametrize("loss,extra", FAMILIES, ids=lambda v: str(v))
def test_end_to_end_held_out_accuracy_rises(tmp_path, tokenizer, loss, extra):
    from dpokit.config import load_config
    from dpokit.objectives import build_objective

    extra = dict(extra)
    lr = extra.pop("learning_rate", 1e-3)
    objective = build_objective(load_config(None, loss=loss, **extra).loss)
    rows = sentiment_rows(2)
    train_rows = unpaired_rows(rows) if objective.unpaired else rows
    trainer = tiny_trainer(
        tmp_path,
        tokenizer,
        rows=train_rows,
        loss=loss,
        learning_rate=lr,
        num_epochs=15,
        batch_size=8,
        **extra,
    )
    uses_ref = objective.needs_reference
    before = pairwise_accuracy(trainer, tokenizer, held_out_rows(), uses_ref)
    result = trainer.train()
    after = pairwise_accuracy(trainer, tokenizer, held_out_rows(), uses_ref)
    assert after >= 0.9 and after > before, (before, after)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_odpo_end_to_end_with_offset_from_scores(tmp_path, tokenizer):
    rows = [dict(r, score_chosen=5.0, score_rejected=1.0) for r in sentiment_rows(2)]
    trainer = tiny_trainer(tmp_path, tokenizer, rows=rows, loss="odpo", num_epochs=6, batch_size=8)
    assert trainer.source.dataset[0].extras["offset"] == pytest.approx(
        torch.log1p(torch.tensor(4.0)).item()
    )
    before = pairwise_accuracy(trainer, tokenizer, held_out_rows(), True)
    trainer.train()
    assert pairwise_accuracy(trainer, tokenizer, held_out_rows(), True) >= 0.9 > before


def test_unpaired_data_and_kl_completions(tokenizer):
    rows = [
        {"prompt": "p one", "completion": " good", "label": True},
        {"prompt": "p two", "completion": " bad", "label": 0},
        {"prompt": "p three", "completion": " fine", "label": "true"},
    ]
    records = [Record("u.jsonl", i + 1, r) for i, r in enumerate(rows)]
    pairs = build_unpaired(records, tokenizer, TokenizeSettings())
    assert [p.extras["label"] for p in pairs] == [1.0, 0.0, 1.0]
    # row i's KL completion is row i+1's completion (cyclic)
    assert [p.rejected_ids for p in pairs] == [
        pairs[1].chosen_ids,
        pairs[2].chosen_ids,
        pairs[0].chosen_ids,
    ]
    assert pairs.report.summary().startswith("3 unpaired rows kept; 0 skipped")
    bad = [Record("u.jsonl", 1, {"prompt": "p", "completion": "c", "label": "maybe"})]
    with pytest.raises(DataError, match="row 1, field 'label': not a boolean"):
        build_unpaired(bad, tokenizer, TokenizeSettings())
    bad = [Record("u.jsonl", 1, {"prompt": "p", "completion": "c"})]
    with pytest.raises(DataError, match="field 'label': missing column"):
        build_unpaired(bad, tokenizer, TokenizeSettings())


def test_ld_dpo_weights_tokens_past_the_shorter_completion(tiny_llama):
    """α = 1 is plain DPO; α = 0 equals scoring both completions cut to the shorter length."""
    pairs = [
        TokenizedPair(0, [5, 6], [7, 8, 9, 10, 2], [11, 2]),
        TokenizedPair(1, [5], [12, 2], [13, 14, 15, 2]),
    ]
    batch = collate_pairs(pairs, pad_token_id=0)
    plain = CausalLMPolicy(tiny_llama).logps(batch).pairs()
    full = CausalLMPolicy(tiny_llama, ld_alpha=1.0).logps(batch).pairs()
    torch.testing.assert_close(full.chosen, plain.chosen)
    zero = CausalLMPolicy(tiny_llama, ld_alpha=0.0).logps(batch).pairs()
    cut = [TokenizedPair(0, [5, 6], [7, 8], [11, 2]), TokenizedPair(1, [5], [12, 2], [13, 14])]
    short = CausalLMPolicy(tiny_llama).logps(collate_pairs(cut, pad_token_id=0)).pairs()
    torch.testing.assert_close(zero.chosen, short.chosen)
    torch.testing.assert_close(zero.rejected, short.rejected)
    half = CausalLMPolicy(tiny_llama, ld_alpha=0.5).logps(batch).pairs()
    torch.testing.assert_close(half.chosen, (plain.chosen + short.chosen) / 2)
    w = ld_token_weights(batch.score_sequence, batch.score_position, 2, 0.25)
    assert w[batch.score_sequence == 0].tolist() == [1.0, 1.0, 0.25, 0.25, 0.25]
    assert w[batch.score_sequence == 2].tolist() == [1.0, 1.0]


SAMPO_PAIRS = [TokenizedPair(i, [5, 6], [7 + i, 8, 9, 10, 11, 12, 2], [13 + i, 2])
               for i in range(6)] + [TokenizedPair(6, [5], [12, 2], [13, 14, 15, 16, 2])]


def test_sampo_keeps_as_many_tokens_of_each_answer_as_the_shorter_has():
    """Per pair: all of the shorter answer, a subset of the longer one of the same size;
    the same subset in every call, another for another seed, and not always the same
    positions across pairs (a draw, not a prefix)."""
    batch = collate_pairs(SAMPO_PAIRS, pad_token_id=0)
    args = (batch.score_sequence, batch.score_position, 7, batch.example_index)
    w = sampo_token_weights(*args, seed=0)
    kept = torch.zeros(14).index_add_(0, batch.score_sequence, w)  # (2B,) kept per sequence
    assert kept.tolist() == [2.0] * 6 + [2.0] + [2.0] * 6 + [2.0]
    assert torch.equal(w, sampo_token_weights(*args, seed=0))
    assert not torch.equal(w, sampo_token_weights(*args, seed=1))
    longer = [tuple(batch.score_position[(batch.score_sequence == s) & (w > 0)].tolist())
              for s in range(6)]
    assert len(set(longer)) > 1, longer


def test_sampo_log_probs_are_the_plain_sum_over_the_kept_tokens(tiny_llama):
    """The policy's SamPO scores equal per-token log-probs of a plain full forward summed
    over the kept tokens, for the policy and (the same tokens) for its reference."""
    batch = collate_pairs(SAMPO_PAIRS, pad_token_id=0)
    policy = CausalLMPolicy(tiny_llama, reference="copy", sampo_seed=3)
    out = policy.logps(batch).pairs()
    with torch.no_grad():
        logits = tiny_llama(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    token_logps = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), -1)[
        batch.score_source, batch.score_target]  # (N,)
    w = sampo_token_weights(batch.score_sequence, batch.score_position, 7, batch.example_index, 3)
    summed = torch.zeros(14).index_add_(0, batch.score_sequence, token_logps * w)  # (2B,)
    torch.testing.assert_close(torch.cat([out.chosen, out.rejected]).detach(), summed,
                               atol=1e-5, rtol=1e-5)
    ref = policy.reference_logps(batch).logps
    torch.testing.assert_close(ref, summed, atol=1e-5, rtol=1e-5)  # the copy starts equal


def test_the_reference_fingerprint_names_the_token_weights(tiny_llama):
    """A reference cached without LD-DPO or SamPO is not reused with them."""
    prints = {CausalLMPolicy(tiny_llama, reference="copy", **o).fingerprint()
              for o in ({}, {"ld_alpha": 0.5}, {"sampo_seed": 0}, {"sampo_seed": 1})}
    assert len(prints) == 4


def test_sampo_and_ld_dpo_refuse_unpaired_rows():
    from dpokit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="kto trains on unpaired rows"):
        load_config(None, loss="kto", sampo=True)


def test_tr_dpo_syncs_the_reference(tmp_path, tokenizer):
    trainer = tiny_trainer(
        tmp_path,
        tokenizer,
        max_steps=3,
        ref_sync=True,
        ref_sync_every=2,
        ref_sync_alpha=1.0,
        learning_rate=1e-2,
    )
    policy = trainer.policy
    name, ref_param = next(iter(policy.reference_model.named_parameters()))
    initial = ref_param.detach().clone()
    trainer.train()
    trained = dict(policy.model.named_parameters())[name].detach()
    assert not torch.equal(ref_param, initial)
    # the hard sync at step 2 copied the policy; step 3 moved the policy on, not the reference
    assert not torch.equal(ref_param, trained)
    policy.sync_reference(1.0)
    torch.testing.assert_close(ref_param, trained)
    before = ref_param.detach().clone()
    with torch.no_grad():
        dict(policy.model.named_parameters())[name].add_(1.0)
    policy.sync_reference(0.25)  # soft: θ_ref <- 0.25 θ + 0.75 θ_ref
    torch.testing.assert_close(ref_param, before + 0.25)


def test_tr_dpo_config_requires_a_copy_reference():
    from dpokit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="separate reference copy"):
        load_config(None, ref_sync=True, precompute_ref_logps=False)
    with pytest.raises(ConfigError, match="precompute_ref_logps=false"):
        load_config(None, ref_sync=True, lora=False)
    cfg = load_config(None, ref_sync=True, lora=False, precompute_ref_logps=False)
    assert (cfg.loss.ref_sync_every, cfg.loss.ref_sync_alpha) == (512, 0.6)  # TRL's defaults
