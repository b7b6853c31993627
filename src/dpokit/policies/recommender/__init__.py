"""The recommender room (the AMRS pattern): a simulator of listeners, a world model of their
responses, a next-item policy behind the generic ``Policy`` protocol, rollout pairs and the
evaluation. Nothing here is text; the generic loop trains it with SFT (behaviour cloning)
and DPO like any other policy."""

from .models import NextItemModel, WorldModel
from .policy import (
    Context,
    ItemPair,
    ItemSequence,
    SessionBatch,
    SessionPolicy,
    collate_pairs,
    collate_sequences,
    load_session_policy,
)
from .simulator import MODES, LoggingPolicy, Session, Simulator, log_sessions, utility

__all__ = ["MODES", "Context", "ItemPair", "ItemSequence", "LoggingPolicy", "NextItemModel",
           "Session", "SessionBatch", "SessionPolicy", "Simulator", "WorldModel",
           "collate_pairs", "collate_sequences", "load_session_policy", "log_sessions",
           "utility"]
