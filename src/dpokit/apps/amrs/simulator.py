"""A known stochastic world of listeners, for tests and the demonstration (the AMRS pattern of
Chan et al. 2026, with a simulator standing in for clinical users).

A catalogue of items with latent attributes (energy, valence, tempo in [0, 1], a genre);
users with genre tastes; sessions with a goal (``MODES``: energize, focus, calm, sleep), each
asking for a target energy and tempo. A user's response to an item (listen or skip, a rating
1-5 when listened, shifts of the user's valence and arousal) follows :meth:`Simulator.respond`,
whose parts are all stated there: it rewards items matching the user's taste and the mode's
targets, and it punishes repeats and long runs of one genre (listeners tire), which a model
fitted on varied logged sessions never sees, and a greedy optimizer runs into.

    >>> sim = Simulator.make(num_items=20, num_users=4, seed=0)
    >>> r = sim.respond(user=0, mode=2, item=3, state=(0.5, 0.5), history=[])
    >>> 0 <= r.listen_prob <= 1 and r.rating in (0.0,) + tuple(range(1, 6))
    True
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...policies.recommender.models import NUM_MODES

MODES = ("energize", "focus", "calm", "sleep")
assert len(MODES) == NUM_MODES  # the policy's session encoder embeds each
# per mode: the target (energy, tempo) of the items, and how the session's utility weighs
# (listened, rating / 5, valence shift, arousal shift)
MODE_TARGETS = {"energize": (0.85, 0.80), "focus": (0.45, 0.40), "calm": (0.25, 0.30),
                "sleep": (0.10, 0.15)}
UTILITY_WEIGHTS = {"energize": (1.0, 0.5, 1.0, 2.0), "focus": (1.5, 0.5, 0.5, -1.0),
                   "calm": (1.0, 0.5, 1.0, -2.0), "sleep": (0.5, 0.25, 0.5, -3.0)}


def utility(mode: int, signals: torch.Tensor) -> torch.Tensor:
    """Per-mode weighted utility of (..., 4) signals -> (...)."""
    weights = torch.tensor(UTILITY_WEIGHTS[MODES[mode]], dtype=signals.dtype,
                           device=signals.device)
    return signals @ weights


@dataclass
class Response:
    listen_prob: float
    listened: bool
    rating: float  # 1..5 when listened, 0 when skipped
    d_valence: float
    d_arousal: float

    def signals(self) -> list[float]:
        return [float(self.listened), self.rating / 5, self.d_valence, self.d_arousal]


@dataclass
class Session:
    """One logged (or simulated) session: user, mode, items shown and the responses.

    signals: per item (listened, rating / 5, valence shift, arousal shift)."""

    user: int
    mode: int
    items: list[int]
    signals: list[list[float]]
    start: tuple[float, float] = (0.5, 0.5)  # (valence, arousal) before the first item


@dataclass
class Simulator:
    """attributes: (I, 3) energy, valence, tempo; genre: (I,); taste: (U, G) in [0, 1]."""

    attributes: torch.Tensor
    genre: torch.Tensor
    taste: torch.Tensor
    seed: int = 0
    match_weights: tuple[float, float, float] = (1.5, 1.0, 0.5)  # taste, energy, tempo
    sharpness: float = 4.0
    repeat_penalty: float = 2.5
    genre_run_penalty: float = 0.6  # per earlier item of the same genre among the last 3
    noise: float = 0.03
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def make(cls, num_items: int = 200, num_genres: int = 8, num_users: int = 400,
             seed: int = 0) -> Simulator:
        g = torch.Generator().manual_seed(seed)
        genre = torch.randint(num_genres, (num_items,), generator=g)
        base = torch.rand(num_genres, 3, generator=g)  # each genre's typical attributes
        attributes = (base[genre] * 0.6 + 0.4 * torch.rand(num_items, 3, generator=g)).clamp(0, 1)
        taste = torch.rand(num_users, num_genres, generator=g) ** 2  # a few liked genres
        return cls(attributes, genre, taste, seed, rng=random.Random(seed))

    @property
    def num_items(self) -> int:
        return len(self.genre)

    @property
    def num_users(self) -> int:
        return len(self.taste)

    def match(self, user: int, mode: int, item: int) -> float:
        """How well an item suits the user and the mode, in [0, 1] (no history)."""
        energy, _, tempo = self.attributes[item].tolist()
        target_energy, target_tempo = MODE_TARGETS[MODES[mode]]
        w_taste, w_energy, w_tempo = self.match_weights
        score = (w_taste * float(self.taste[user, self.genre[item]])
                 + w_energy * (1 - abs(energy - target_energy))
                 + w_tempo * (1 - abs(tempo - target_tempo)))
        return score / sum(self.match_weights)

    def respond(self, user: int, mode: int, item: int, state: tuple[float, float],
                history: Sequence[int]) -> Response:
        """The response model: ``p(listen) = sigmoid(sharpness * (3 * match - 2) - repeat -
        genre run)``; a listened item is rated ``round(1 + 4 * match)`` (+-1 at random with
        probability 0.2) and moves the state toward the item's (valence, energy) by 0.3 of the
        gap, plus Gaussian noise; a skip lowers valence by 0.02."""
        rng = self.rng
        match = self.match(user, mode, item)
        logit = self.sharpness * (3 * match - 2)
        if item in history:
            logit -= self.repeat_penalty
        recent = history[-3:]
        logit -= self.genre_run_penalty * sum(int(self.genre[h] == self.genre[item])
                                              for h in recent)
        p = 1 / (1 + math.exp(-logit))
        valence, arousal = state
        if rng.random() >= p:
            return Response(p, False, 0.0, -0.02, 0.0)
        rating = round(1 + 4 * match)
        if rng.random() < 0.2:
            rating += rng.choice((-1, 1))
        _, item_valence, _ = self.attributes[item].tolist()
        item_energy = float(self.attributes[item, 0])
        d_valence = 0.3 * (item_valence - valence) + rng.gauss(0, self.noise)
        d_arousal = 0.3 * (item_energy - arousal) + rng.gauss(0, self.noise)
        return Response(p, True, float(min(5, max(1, rating))), d_valence, d_arousal)

    def run(self, user: int, mode: int, items: Sequence[int],
            start: tuple[float, float] = (0.5, 0.5),
            history: Sequence[int] = ()) -> Session:
        """Show ``items`` in order; the state and the history evolve with each response."""
        state, seen, signals = start, list(history), []
        for item in items:
            r = self.respond(user, mode, item, state, seen)
            state = (min(1.0, max(0.0, state[0] + r.d_valence)),
                     min(1.0, max(0.0, state[1] + r.d_arousal)))
            seen.append(item)
            signals.append(r.signals())
        return Session(user, mode, list(items), signals, start)

    def session_utility(self, session: Session) -> float:
        return float(utility(session.mode, torch.tensor(session.signals)).mean())


class LoggingPolicy:
    """The deployed policy whose sessions are logged: a softmax over items of popularity plus
    a noisy guess of the user's taste (the true genre taste + Gaussian noise of sd 0.3, for
    every user: it knows its users, which a model of the logged sessions cannot) and a weak
    pull to the mode's energy, sampled without repeats within a session. It never reads the
    session's history, and never shows the ``unlisted`` items (added to the catalogue after
    the logs)."""

    def __init__(self, sim: Simulator, temperature: float = 0.5, seed: int = 0,
                 unlisted: Sequence[int] = ()):
        g = torch.Generator().manual_seed(seed + 1)
        self.sim, self.temperature = sim, temperature
        self.popularity = torch.randn(sim.num_items, generator=g) * 0.5
        self.taste_guess = (sim.taste + 0.3 * torch.randn(sim.taste.shape, generator=g))
        self.unlisted = torch.zeros(sim.num_items, dtype=torch.bool)
        self.unlisted[list(unlisted)] = True
        self.generator = torch.Generator().manual_seed(seed + 2)

    def scores(self, user: int, mode: int) -> torch.Tensor:
        target_energy, _ = MODE_TARGETS[MODES[mode]]
        energy_fit = -2.0 * (self.sim.attributes[:, 0] - target_energy).abs()
        scores = self.popularity + 2.0 * self.taste_guess[user, self.sim.genre] + energy_fit
        return scores.masked_fill(self.unlisted, float("-inf"))

    def session(self, user: int, mode: int, length: int,
                exclude: Sequence[int] = ()) -> list[int]:
        """``length`` items for the user in ``mode``, none of ``exclude`` (items already
        shown)."""
        scores = self.scores(user, mode)
        scores[list(exclude)] = float("-inf")
        probs = torch.softmax(scores / self.temperature, -1)
        return torch.multinomial(probs, length, replacement=False,
                                 generator=self.generator).tolist()


def log_sessions(sim: Simulator, users: Sequence[int], per_user: int, length: int,
                 seed: int = 0, logger: LoggingPolicy | None = None) -> list[Session]:
    """Sessions of ``logger`` (default: the logging policy of ``seed``) for ``users``, each in
    a random mode and start state drawn with ``seed`` (pass one logger to log the training and
    the held-out users' sessions with the same policy)."""
    rng = random.Random(seed)
    logger = logger or LoggingPolicy(sim, seed=seed)
    sessions = []
    for user in users:
        for _ in range(per_user):
            mode = rng.randrange(len(MODES))
            start = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
            sessions.append(sim.run(user, mode, logger.session(user, mode, length), start))
    return sessions
