"""A non-text policy trained through the same Trainer: a recommender over items.

The policy is a table of item logits per user context. A pair says "in context c, item w was
preferred to item l". The trainer neither knows nor cares that there are no tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from dpokit.config import load_config
from dpokit.core import BasePolicy, Policy, PolicyCapabilities, SequenceScores
from dpokit.objectives import build_objective
from dpokit.train import EvalSet, StaticSource, make_trainer

N_CONTEXTS, N_ITEMS = 4, 12


@dataclass
class ItemPair:
    index: int
    context: int
    chosen: int
    rejected: int


@dataclass
class ItemBatch:
    """context / chosen / rejected / example_index: (B,) long."""

    context: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    example_index: torch.Tensor
    extras: dict = field(default_factory=dict)
    ref_logps: torch.Tensor | None = None
    num_tokens: int = 0

    def to(self, device):
        return self


def collate_items(pairs: list[ItemPair]) -> ItemBatch:
    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return ItemBatch(t([p.context for p in pairs]), t([p.chosen for p in pairs]),
                     t([p.rejected for p in pairs]), t([p.index for p in pairs]))


class TableRecommender(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(N_CONTEXTS, N_ITEMS))

    def forward(self, context, items):
        return torch.log_softmax(self.logits[context], -1).gather(1, items[:, None]).squeeze(1)


class RecommenderPolicy(BasePolicy):
    capabilities = PolicyCapabilities(reference="copy")

    def __init__(self):
        self.model = TableRecommender()
        self.reference = copy.deepcopy(self.model).requires_grad_(False)

    def _logps(self, module, batch) -> SequenceScores:
        items = torch.cat([batch.chosen, batch.rejected])  # (2B,)
        context = torch.cat([batch.context, batch.context])  # (2B,)
        return SequenceScores(module(context, items), torch.ones_like(items))

    def logps(self, batch, *, sampling_norm=False):
        return self._logps(self.model, batch)

    @torch.no_grad()
    def reference_logps(self, batch):
        return self._logps(self.reference, batch)

    def named_trainable_parameters(self):
        return dict(self.model.named_parameters())

    def prepare(self, accelerator):
        self.model = accelerator.prepare(self.model)
        return [self.model]

    def train(self, mode=True):
        self.model.train(mode)

    def trainable_state_dict(self):
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def load_trainable_state_dict(self, state):
        self.model.load_state_dict(state)

    def save_pretrained(self, directory):
        if directory is None:  # not the main process
            return
        torch.save(self.model.state_dict(), f"{directory}/recommender.pt")


def favourite(context: int) -> int:
    return 3 * context  # the item users of each context prefer


def item_pairs(seed: int, n: int) -> list[ItemPair]:
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        c = int(torch.randint(N_CONTEXTS, (1,), generator=g))
        other = int(torch.randint(N_ITEMS, (1,), generator=g))
        if other == favourite(c):
            other = (other + 1) % N_ITEMS
        pairs.append(ItemPair(i, c, favourite(c), other))
    return pairs


def test_recommender_policy_trains_through_the_same_trainer(tmp_path):
    policy = RecommenderPolicy()
    assert isinstance(policy, Policy)
    cfg = load_config(None, output_dir=str(tmp_path), lora=False, learning_rate=0.05, beta=0.5,
                      batch_size=8, num_epochs=5, progress_bar=False, log_with=[],
                      precompute_ref_logps=True, ref_cache_dir=None)
    source = StaticSource(item_pairs(0, 64), collate_items, batch_size=8)
    trainer = make_trainer(cfg, policy, build_objective(cfg.loss), source,
                           EvalSet(item_pairs(1, 32), collate_items, 8), log=lambda _: None)
    before = trainer.evaluate()
    result = trainer.train()
    after = result.eval_history[-1]
    # every margin is 0 before training: ties, counted half (the no-skill level); TRL's
    # strict count calls them all wrong
    assert before["eval/rewards/accuracies"] == 0.5
    assert before["eval/rewards/accuracies_strict"] == 0.0
    assert after["eval/rewards/accuracies"] == after["eval/rewards/accuracies_strict"] == 1.0
    assert after["eval/loss"] < before["eval/loss"] - 0.1
    probs = torch.softmax(policy.model.logits.detach(), -1)
    for c in range(N_CONTEXTS):
        assert int(probs[c].argmax()) == favourite(c)
    trainer.save_checkpoint()
    trainer.save_final()
    assert (tmp_path / "final" / "recommender.pt").is_file()
