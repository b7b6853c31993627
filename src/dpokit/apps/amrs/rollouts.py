"""Pairs from world-model rollouts, diversity figures, and the evaluation of a recommender in
the world model and in the true simulator.

Pairs (the AMRS recipe): for each context, N candidate lists sampled from the policy are
rolled out in the world model, scored by the mode's weighted utility of the predicted
responses, and paired best vs worst (``best_worst``) or every pair whose utility differs by
at least ``margin`` (``margin``).

    >>> coverage([[1, 2], [2, 3]], num_items=10), intra_list_distance([[0, 1]], torch.eye(2))
    (0.3, 1.4142135381698608)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...policies.recommender.models import NextItemModel
from ...policies.recommender.policy import (
    Context,
    ItemPair,
    ItemSequence,
    collate_sequences,
    context_tensors,
)
from .simulator import Session, Simulator, utility
from .world_model import WorldModel

Scorer = Callable[[Context, torch.Tensor], torch.Tensor]  # (context, (N, K) lists) -> (N,)


def world_model_scorer(world: WorldModel) -> Scorer:
    """Mean per-item utility of each list's predicted responses (the mode's weights)."""

    def score(context: Context, lists: torch.Tensor) -> torch.Tensor:
        t = context_tensors([context] * len(lists))
        predicted = world.rollout(t["context_items"], t["context_signals"], t["mode"],
                                  t["start"], lists)  # (N, K, 4)
        return utility(context.mode, predicted).mean(1)  # (N,)

    return score


def rollout_pairs(contexts: Sequence[Context], candidates: Sequence[torch.Tensor],
                  score: Scorer, pairing: str = "best_worst", margin: float = 0.0,
                  first_index: int = 0) -> list[ItemPair]:
    """Pairs from ``candidates[i]`` (N, K) lists for ``contexts[i]``, ranked by ``score``.

    best_worst: the best and the worst list, when their utilities differ by more than
    ``margin``; margin: every (better, worse) pair at least ``margin`` apart. Identical lists
    never pair."""
    if pairing not in ("best_worst", "margin"):
        raise ValueError(f"pairing must be best_worst or margin, got {pairing!r}")
    pairs: list[ItemPair] = []
    for context, lists in zip(contexts, candidates, strict=True):
        values = score(context, lists).tolist()
        order = sorted(range(len(values)), key=lambda i: -values[i])
        if pairing == "best_worst":
            options = [(order[0], order[-1])]
        else:
            options = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
        for a, b in options:
            gap = values[a] - values[b]
            keep = gap > margin if pairing == "best_worst" else gap >= margin and gap > 0
            if keep and lists[a].tolist() != lists[b].tolist():
                pairs.append(ItemPair(first_index + len(pairs), context,
                                      tuple(lists[a].tolist()), tuple(lists[b].tolist())))
    return pairs


# --- diversity ---------------------------------------------------------------------------------


def coverage(lists: Sequence[Sequence[int]], num_items: int) -> float:
    """Share of the catalogue recommended at least once."""
    return len({i for items in lists for i in items}) / num_items


def item_entropy(lists: Sequence[Sequence[int]], num_items: int) -> float:
    """Entropy of how often each item is recommended, over log(num_items): 1 = uniform."""
    counts = Counter(i for items in lists for i in items)
    total = sum(counts.values())
    h = -sum(c / total * math.log(c / total) for c in counts.values())
    return h / math.log(num_items)


def intra_list_distance(lists: Sequence[Sequence[int]], features: torch.Tensor) -> float:
    """Mean Euclidean distance between the features of two items of one list, averaged over
    lists (0 when a list repeats one item)."""
    values = []
    for items in lists:
        x = features[torch.tensor(list(items))]  # (K, F)
        i, j = torch.triu_indices(len(items), len(items), offset=1)
        values.append(float((x[i] - x[j]).norm(dim=-1).mean()))
    return sum(values) / len(values)


def item_features(sim: Simulator) -> torch.Tensor:
    """(I, 3 + G): attributes and the genre one-hot, the space of intra-list distance."""
    genres = torch.nn.functional.one_hot(sim.genre, int(sim.genre.max()) + 1).float()
    return torch.cat([sim.attributes, genres], 1)


# --- evaluation ------------------------------------------------------------------------------


SIGNALS = ("listened", "rating", "valence shift", "arousal shift")  # rating: / 5, 0 if skipped


@dataclass
class ListsReport:
    """Figures of a set of recommended lists, one per context; ``world_signals`` and
    ``true_signals``: each response signal's mean per item (:data:`SIGNALS`), predicted by
    the world model and drawn from the simulator (the paper's per-signal report)."""

    world_utility: float  # mean per-item utility predicted by the world model
    true_utility: float  # the same lists shown to the simulated users
    true_utility_by_mode: dict[str, float]
    world_signals: dict[str, float]
    true_signals: dict[str, float]
    coverage: float
    entropy: float
    intra_list_distance: float
    repeats: float  # share of lists that show an item twice
    new_items: float  # share of recommended items that no logged session showed
    kl_to_reference: float | None = None  # nats per list, from the policy's own samples

    def row(self) -> dict[str, float | None]:
        return dict(vars(self))


def evaluate_lists(contexts: Sequence[Context], lists: torch.Tensor, world: WorldModel,
                   sim: Simulator, modes: Sequence[str],
                   new_items: Sequence[int] = ()) -> ListsReport:
    """World-model and true-simulator utility of ``lists`` (N, K) after ``contexts``, per
    signal too, and the lists' diversity. The simulator shows each list after its context
    (the context items as history; each user's own state)."""
    t = context_tensors(contexts)  # one rollout for every list, not one per context
    signals = world.rollout(t["context_items"], t["context_signals"], t["mode"], t["start"],
                            lists)  # (N, K, 4)
    predicted = [float(utility(c.mode, signals[i]).mean()) for i, c in enumerate(contexts)]
    true, drawn = [], []
    by_mode: dict[str, list[float]] = {m: [] for m in modes}
    for c, items in zip(contexts, lists.tolist(), strict=True):
        state = c.start
        for (_, _, dv, da) in c.signals:  # the state the context left the user in
            state = (min(1, max(0, state[0] + dv)), min(1, max(0, state[1] + da)))
        session: Session = sim.run(c.user, c.mode, items, state, history=c.items)
        value = sim.session_utility(session)
        drawn.append(torch.tensor(session.signals))  # (K, 4)
        true.append(value)
        by_mode[modes[c.mode]].append(value)
    rows = lists.tolist()
    fresh = set(new_items)
    world_means = signals.flatten(0, 1).mean(0).tolist()  # (4,)
    true_means = torch.stack(drawn).flatten(0, 1).mean(0).tolist()  # (4,)
    return ListsReport(
        world_utility=sum(predicted) / len(predicted), true_utility=sum(true) / len(true),
        true_utility_by_mode={m: sum(v) / len(v) for m, v in by_mode.items() if v},
        world_signals=dict(zip(SIGNALS, world_means, strict=True)),
        true_signals=dict(zip(SIGNALS, true_means, strict=True)),
        new_items=sum(i in fresh for r in rows for i in r) / sum(len(r) for r in rows),
        coverage=coverage(rows, sim.num_items), entropy=item_entropy(rows, sim.num_items),
        intra_list_distance=intra_list_distance(rows, item_features(sim)),
        repeats=sum(len(set(r)) < len(r) for r in rows) / len(rows))


@torch.no_grad()
def greedy_lists(contexts: Sequence[Context], world: WorldModel, length: int,
                 num_items: int) -> torch.Tensor:
    """The greedy baseline: item by item, the catalogue item with the highest predicted
    utility after the context and the items picked so far (their predicted responses fed
    back); repeats allowed, as a utility maximizer that trusts its model would."""
    out = []
    for c in contexts:
        t = context_tensors([c] * num_items)
        items, signals = t["context_items"], t["context_signals"]  # (I, C), (I, C, 4)
        candidates = torch.arange(num_items)[:, None]  # (I, 1)
        picked: list[int] = []
        for _ in range(length):
            trial = torch.cat([items, candidates], 1)  # every item as the next one
            trial_signals = torch.cat([signals, torch.zeros_like(signals[:, :1])], 1)
            raw = world(trial, WorldModel.shifted(trial_signals), t["mode"], t["start"])
            expected = WorldModel.expected(raw[:, -1])  # (I, 4)
            best = int(utility(c.mode, expected).argmax())
            picked.append(best)
            items = trial[best].expand(num_items, -1)
            signals = torch.cat([signals, expected[best].expand(num_items, 1, -1)], 1)
        out.append(picked)
    return torch.tensor(out)


@torch.no_grad()
def sample_lists(model: NextItemModel, contexts: Sequence[Context], length: int,
                 generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    """(N, length) lists sampled from the policy after each context."""
    t = context_tensors(contexts)
    return model.sample(t["context_items"], t["context_signals"], t["mode"], t["start"],
                        length, temperature, generator)


@torch.no_grad()
def list_kl(model: NextItemModel, reference: NextItemModel, contexts: Sequence[Context],
            lists: torch.Tensor) -> float:
    """KL(policy || reference) per list, estimated from the policy's own lists: the mean of
    log pi(list) - log pi_ref(list)."""
    batch = collate_sequences([ItemSequence(i, c, tuple(lists[i].tolist()))
                               for i, c in enumerate(contexts)])
    args = (batch.context_items, batch.context_signals, batch.mode, batch.start,
            batch.continuation)
    mine = model.continuation_logps(*args).sum(1)
    ref = reference.continuation_logps(*args).sum(1)
    return float((mine - ref).mean())
