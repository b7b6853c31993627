"""AMRS (Chan et al. 2026): a recommender tuned offline with DPO on a world model. ``simulator``
(listeners, sessions with a goal, their stated response model, a logging policy),
``world_model`` (the offline stand-in for users), ``rollouts`` (pairs from world-model
rollouts, diversity, evaluation, the greedy baseline), ``run`` (the recipe and the whole run:
logged sessions -> world model -> behaviour cloning -> DPO -> evaluation). The policy is
:mod:`dpokit.policies.recommender`; the experiment ``experiments/recommender.py``."""
