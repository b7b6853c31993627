"""The session policy behind the generic Policy protocol: a list's log-prob by hand, behaviour
cloning and DPO on the generic trainer, the saved model's card and record naming its own model,
and the one loader reading it back."""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.config import load_config
from dpokit.objectives import SFTObjective, build_objective
from dpokit.policies.recommender import (
    Context,
    ItemPair,
    ItemSequence,
    NextItemModel,
    SessionPolicy,
    collate_pairs,
    collate_sequences,
)
from dpokit.train import StaticSource, make_trainer

CTX = Context(mode=1, start=(0.5, 0.5), items=(0, 1), signals=((1, .6, 0, 0), (0, 0, 0, 0)))


def test_list_log_prob_is_the_sum_over_items_without_repeats():
    torch.manual_seed(0)
    model = NextItemModel(6, dim=16, layers=1).eval()
    batch = collate_sequences([ItemSequence(0, CTX, (4, 2, 5))])
    logps = model.continuation_logps(batch.context_items, batch.context_signals, batch.mode,
                                     batch.start, batch.continuation)  # (1, 3)
    items = torch.tensor([[0, 1, 4, 2]])
    known = torch.tensor([[True, True, False, False]])
    signals = torch.cat([batch.context_signals, torch.zeros(1, 2, 4)], 1)
    logits = model(items, signals, known, batch.mode, batch.start)[0]  # (4, 6)
    by_hand = 0.0
    for k, (position, item, excluded) in enumerate([(1, 4, {0, 1}), (2, 2, {0, 1, 4}),
                                                     (3, 5, {0, 1, 4, 2})]):
        row = logits[position].clone()
        row[list(excluded)] = float("-inf")
        by_hand += float(row.log_softmax(-1)[item])
        assert float(logps[0, k]) == pytest.approx(float(row.log_softmax(-1)[item]), abs=1e-5)
    policy = SessionPolicy(model, reference=True)
    assert float(policy.logps(batch).logps[0]) == pytest.approx(by_hand, abs=1e-5)
    drawn = model.sample(batch.context_items.expand(50, -1), batch.context_signals.expand(50,
                         -1, -1), batch.mode.expand(50), batch.start.expand(50, -1), 4,
                         generator=torch.Generator().manual_seed(0))
    for row in drawn.tolist():  # never a context item, never twice
        assert len(set(row)) == 4 and not set(row) & {0, 1}


def test_bc_then_dpo_through_the_generic_trainer(tmp_path):
    torch.manual_seed(0)
    policy = SessionPolicy(NextItemModel(8, dim=16, layers=1), reference=False)
    rows = [ItemSequence(i, CTX, (5, 6)) for i in range(16)]
    exact = dict(mixed_precision="no")  # (the first DPO loss is ln 2 to fp32's rounding)
    cfg = load_config(None, output_dir=str(tmp_path / "bc"), learning_rate=1e-2, batch_size=8,
                      max_steps=15, log_with=[], progress_bar=False, **exact)
    history = make_trainer(cfg, policy, SFTObjective(), StaticSource(rows, collate_sequences, 8),
                           log=lambda _: None).train().history
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]  # clones the logged list
    dpo_policy = SessionPolicy(policy.model, reference=True)
    pairs = [ItemPair(i, CTX, (7, 3), (5, 6)) for i in range(16)]
    cfg = load_config(None, output_dir=str(tmp_path / "dpo"), learning_rate=1e-2,
                      batch_size=8, max_steps=10, log_with=[], progress_bar=False, **exact)
    history = make_trainer(cfg, dpo_policy, build_objective(cfg.loss),
                           StaticSource(pairs, collate_pairs, 8), log=lambda _: None
                           ).train().history
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # starts at the reference
    assert history[-1]["loss"] < 0.4 and history[-1]["rewards/accuracies"] == 1.0


def test_the_saved_model_card_names_its_own_model_and_the_loader_reads_it_back(tmp_path):
    """A recommender's model card says what it is (a session transformer, trained in full),
    not the text defaults (`smollm2`, a LoRA adapter); `dpokit.json` names the modality, so
    the one loader of model folders gives back a session policy with the same scores."""
    import json

    from dpokit.runs import load_policy

    torch.manual_seed(0)
    policy = SessionPolicy(NextItemModel(8, dim=16, layers=1), reference=False)
    rows = [ItemSequence(i, CTX, (5, 6)) for i in range(8)]
    cfg = load_config(None, output_dir=str(tmp_path / "bc"), batch_size=8, max_steps=1,
                      log_with=[], progress_bar=False)
    trainer = make_trainer(cfg, policy, SFTObjective(), StaticSource(rows, collate_sequences, 8),
                           log=lambda _: None)
    trainer.train()
    final = trainer.save_final()
    card = (final / "README.md").read_text()
    assert "base_model: NextItemModel: session transformer over 8 items" in card
    assert "# recommender model trained with dpokit" in card
    assert "smollm2" not in card.lower() and "lora" not in card.lower()
    assert "library_name: torch" in card and "- recommender" in card
    record = json.loads((final / "dpokit.json").read_text())
    assert record == {"modality": "recommender", "model": record["model"], "kind": "full",
                      "library": "torch"}
    loaded = load_policy(str(final))
    assert type(loaded) is SessionPolicy
    batch = collate_sequences(rows[:2])
    torch.testing.assert_close(loaded.logps(batch).logps, policy.logps(batch).logps)

