"""Offline DPO for a recommender (the AMRS pattern, Chan et al. 2026), end to end: logged
sessions -> a world model of users' responses -> behaviour cloning of the logged policy ->
pairs from world-model rollouts -> DPO with the cloned policy as reference -> evaluation in
the world model and in the true simulator, against a greedy utility maximizer.

Behaviour cloning and DPO run on the generic :class:`~dpokit.train.Trainer` (SFT and DPO
objectives, a :class:`~dpokit.policies.recommender.SessionPolicy`); only the world model has
its own small fitting loop (a supervised regressor, not a policy).

    >>> recipe = load_recommender_recipe("src/dpokit/recipes/recommender.yaml")  # doctest: +SKIP
    >>> result = run_recommender(recipe)                                       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...config import ConfigError, TrainConfig, check_keys, load_config, load_settings, read_recipe
from ...objectives import SFTObjective, build_objective
from ...policies.recommender import (
    Context,
    ItemSequence,
    NextItemModel,
    SessionPolicy,
    collate_pairs,
    collate_sequences,
)
from ...train import StaticSource, Trainer, make_trainer
from .rollouts import (
    evaluate_lists,
    greedy_lists,
    list_kl,
    rollout_pairs,
    sample_lists,
    world_model_scorer,
)
from .simulator import MODES, LoggingPolicy, Session, Simulator, log_sessions
from .world_model import WorldModel


@dataclass
class RecommenderSettings:
    """The world, the world model and the pairs (the trainers' settings are ordinary
    ``TrainConfig`` sections under ``bc:`` and ``dpo:`` in the recipe)."""

    num_items: int = 200
    num_genres: int = 8
    num_users: int = 400
    heldout_users: int = 100  # cold start: never seen by the world model or the policies
    sessions_per_user: int = 12
    context_length: int = 5
    list_length: int = 5
    dim: int = 64
    layers: int = 2
    world_epochs: int = 8
    world_batch: int = 64
    world_lr: float = 2e-3
    candidates: int = 8  # lists sampled per context for the rollout pairs
    pair_contexts: int = 1500
    pairing: str = "best_worst"
    margin: float = 0.0
    eval_contexts: int = 400
    new_items: int = 0  # the catalogue's last items, added after the logs: never logged
    seed: int = 0


@dataclass
class RecommenderRecipe:
    settings: RecommenderSettings
    bc: TrainConfig
    dpo: TrainConfig
    output_dir: Path = Path("outputs/recommender")


def _flat(section: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, part in section.items() for k, v in (part or {}).items()}


def load_recommender_recipe(path: str | None = None, overrides: dict[str, Any] | None = None
                            ) -> RecommenderRecipe:
    """A recipe: ``recommender:`` settings, ``bc:`` and ``dpo:`` trainer sections, ``output_dir``.
    ``overrides``: ``recommender.KEY``, ``bc.SECTION.KEY`` or ``dpo.SECTION.KEY`` values."""
    raw = read_recipe(path) if path else {}
    check_keys(raw, ("recommender", "bc", "dpo", "output_dir"), f"{path}")
    settings = dict(raw.get("recommender") or {})
    parts = {"bc": _flat(raw.get("bc") or {}), "dpo": _flat(raw.get("dpo") or {})}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head == "recommender":
            settings[rest] = value
        elif head in parts:
            parts[head][rest] = value
        else:
            raise ConfigError(f"override {key!r}: start with recommender., bc. or dpo.")
    out = Path(raw.get("output_dir", "outputs/recommender"))
    return RecommenderRecipe(load_settings(RecommenderSettings, settings, "recommender"),
                             load_config(None, **parts["bc"]),
                             load_config(None, **parts["dpo"]), out)


# --- data --------------------------------------------------------------------------------------


def session_context(s: Session, length: int) -> Context:
    return Context(s.mode, s.start, tuple(s.items[:length]),
                   tuple(tuple(x) for x in s.signals[:length]), s.user)


def _tensors(sessions: list[Session]) -> dict[str, torch.Tensor]:
    return {"items": torch.tensor([s.items for s in sessions]),
            "signals": torch.tensor([s.signals for s in sessions], dtype=torch.float32),
            "mode": torch.tensor([s.mode for s in sessions]),
            "start": torch.tensor([s.start for s in sessions], dtype=torch.float32)}


# --- the world model ---------------------------------------------------------------------------


def fit_world_model(train: list[Session], held: list[Session], s: RecommenderSettings,
                    log=print) -> tuple[WorldModel, list[dict[str, float]]]:
    """Fit on the train users' sessions; after each epoch, the held-out users' losses."""
    torch.manual_seed(s.seed)
    model = WorldModel(s.num_items, s.dim, s.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.world_lr)
    data, test = _tensors(train), _tensors(held)
    history = []
    g = torch.Generator().manual_seed(s.seed)
    for epoch in range(s.world_epochs):
        model.train()
        order = torch.randperm(len(train), generator=g)
        for i in range(0, len(order), s.world_batch):
            idx = order[i:i + s.world_batch]
            loss, _ = model.loss(*(data[k][idx] for k in ("items", "signals", "mode", "start")))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            train_loss, _ = model.loss(*(data[k][:2000] for k in ("items", "signals", "mode",
                                                                   "start")))
            held_loss, parts = model.loss(*(test[k] for k in ("items", "signals", "mode",
                                                               "start")))
        history.append({"epoch": epoch + 1, "train_loss": float(train_loss),
                        "heldout_loss": float(held_loss), **{f"heldout_{k}": v
                                                             for k, v in parts.items()}})
        log(f"world model epoch {epoch + 1}: train {float(train_loss):.4f}, held-out users "
            f"{float(held_loss):.4f}")
    return model, history


@torch.no_grad()
def calibration(model: WorldModel, sessions: list[Session], bins: int = 10
                ) -> list[dict[str, float]]:
    """Reliability of the predicted p(listen) on ``sessions``: per bin of predicted
    probability, the mean prediction and the observed listen rate."""
    t = _tensors(sessions)
    out = model(t["items"], WorldModel.shifted(t["signals"]), t["mode"], t["start"])
    p = torch.sigmoid(out[..., 0]).reshape(-1)
    y = t["signals"][..., 0].reshape(-1)
    rows = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        if inside.any():
            rows.append({"bin": b, "predicted": float(p[inside].mean()),
                         "observed": float(y[inside].mean()), "count": int(inside.sum())})
    return rows


def expected_calibration_error(rows: list[dict[str, float]]) -> float:
    total = sum(r["count"] for r in rows)
    return sum(r["count"] / total * abs(r["predicted"] - r["observed"]) for r in rows)


# --- the policies ------------------------------------------------------------------------------


def _trainer(cfg: TrainConfig, policy: SessionPolicy, objective, rows, collate, out: Path,
             log) -> Trainer:
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(out)))
    source = StaticSource(rows, collate, cfg.optim.batch_size, cfg.optim.grad_accum_steps,
                          cfg.optim.seed, cfg.data.shuffle)
    return make_trainer(cfg, policy, objective, source, log=log)


@dataclass
class RecommenderResult:
    """``users``: the training and held-out users; ``arms``: each arm's
    :class:`~dpokit.apps.amrs.rollouts.ListsReport` on the held-out users' contexts;
    ``stress``: per stress test (:data:`STRESS_TESTS`), each arm's true and world-model
    utility."""

    world_history: list[dict[str, float]]
    calibration: list[dict[str, float]]
    ece: float
    pairs: int
    bc_history: list[dict]
    dpo_history: list[dict]
    users: dict[str, list[int]]
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    stress: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


# pre-deployment stress tests: each changes the held-out contexts before every arm recommends
STRESS_TESTS = {
    # the listener changes goal after the context: energize <-> calm, focus <-> sleep
    "mode switch": lambda c: dataclasses.replace(c, mode=(c.mode + 2) % len(MODES)),
    # a listener with (almost) no history: one shown item, the shortest context the models take
    "one-item history": lambda c: dataclasses.replace(c, items=c.items[:1],
                                                      signals=c.signals[:1]),
}


def run_recommender(recipe: RecommenderRecipe, log=print) -> RecommenderResult:
    s = recipe.settings
    random.seed(s.seed)
    sim = Simulator.make(s.num_items, s.num_genres, s.num_users, s.seed)
    users = list(range(s.num_users))
    random.Random(s.seed).shuffle(users)
    held_users, train_users = users[:s.heldout_users], users[s.heldout_users:]
    length = s.context_length + s.list_length
    new_items = list(range(s.num_items - s.new_items, s.num_items))
    logger = LoggingPolicy(sim, seed=s.seed, unlisted=new_items)  # one policy logs both
    train = log_sessions(sim, train_users, s.sessions_per_user, length, s.seed, logger)
    held = log_sessions(sim, held_users, max(1, s.eval_contexts // len(held_users)), length,
                        s.seed + 1, logger)
    log(f"simulator: {s.num_items} items ({s.new_items} never logged), {len(train_users)} + "
        f"{len(held_users)} held-out users, {len(train)} logged sessions")
    world, world_history = fit_world_model(train, held, s, log)
    world.eval()
    rel = calibration(world, held)
    ece = expected_calibration_error(rel)
    log(f"world model on held-out users: p(listen) expected calibration error {ece:.4f}")

    bc_rows = [ItemSequence(i, session_context(x, s.context_length),
                            tuple(x.items[s.context_length:])) for i, x in enumerate(train)]
    torch.manual_seed(s.seed)
    bc_policy = SessionPolicy(NextItemModel(s.num_items, s.dim, s.layers), reference=False)
    bc = _trainer(recipe.bc, bc_policy, SFTObjective(), bc_rows, collate_sequences,
                  recipe.output_dir / "bc", log)
    bc_history = bc.train().history
    bc.close()
    cloned = copy.deepcopy(bc_policy.model).eval()

    rng = random.Random(s.seed + 2)
    contexts = [session_context(x, s.context_length)
                for x in rng.sample(train, min(s.pair_contexts, len(train)))]
    g = torch.Generator().manual_seed(s.seed + 3)
    candidates = [sample_lists(cloned, [c] * s.candidates, s.list_length, g)
                  for c in contexts]
    pairs = rollout_pairs(contexts, candidates, world_model_scorer(world), s.pairing, s.margin)
    log(f"pairs: {len(pairs)} from {len(contexts)} contexts x {s.candidates} rolled-out lists")

    dpo_policy = SessionPolicy(copy.deepcopy(cloned).train(), reference=True)
    dpo = _trainer(recipe.dpo, dpo_policy, build_objective(recipe.dpo.loss), pairs, collate_pairs,
                   recipe.output_dir / "dpo", log)
    dpo_history = dpo.train().history
    dpo.save_final()
    dpo.close()
    tuned = dpo_policy.model.eval()

    result = RecommenderResult(world_history, rel, ece, len(pairs), bc_history, dpo_history,
                               {"train": train_users, "held_out": held_users})
    eval_contexts = [session_context(x, s.context_length) for x in held][:s.eval_contexts]
    logged = torch.tensor([x.items[s.context_length:] for x in held][:s.eval_contexts])
    g = torch.Generator().manual_seed(s.seed + 4)

    def recommend(contexts: list[Context], logging_lists: torch.Tensor | None = None):
        """Every arm's lists after ``contexts``; the logging policy's fresh when not given."""
        if logging_lists is None:
            logging_lists = torch.tensor([logger.session(c.user, c.mode, s.list_length, c.items)
                                          for c in contexts])
        return {"logging policy": logging_lists,
                "behaviour cloning": sample_lists(cloned, contexts, s.list_length, g),
                "DPO": sample_lists(tuned, contexts, s.list_length, g),
                "greedy (world model)": greedy_lists(contexts, world, s.list_length,
                                                     s.num_items)}

    for name, lists in recommend(eval_contexts, logged).items():
        report = evaluate_lists(eval_contexts, lists, world, sim, MODES, new_items)
        if name in ("behaviour cloning", "DPO"):
            report.kl_to_reference = list_kl(tuned if name == "DPO" else cloned, cloned,
                                             eval_contexts, lists)
        result.arms[name] = report.row()
        log(f"{name}: true utility {report.true_utility:+.4f}, world model "
            f"{report.world_utility:+.4f}, coverage {report.coverage:.3f}, entropy "
            f"{report.entropy:.3f}, intra-list distance {report.intra_list_distance:.3f}")
    for test, change in STRESS_TESTS.items():
        stressed = [change(c) for c in eval_contexts]
        result.stress[test] = {}
        for name, lists in recommend(stressed).items():
            report = evaluate_lists(stressed, lists, world, sim, MODES, new_items)
            result.stress[test][name] = {"true_utility": report.true_utility,
                                         "world_utility": report.world_utility}
            log(f"stress test {test}, {name}: true utility {report.true_utility:+.4f}, "
                f"world model {report.world_utility:+.4f}")
    return result
