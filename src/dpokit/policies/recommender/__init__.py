"""The recommender room: a next-item policy over listening sessions behind the generic
``Policy`` protocol (a list's log-prob = the sum over its items), its session batches and
saving. Nothing here is text; the generic loop trains it with SFT (behaviour cloning) and DPO
like any other policy. The AMRS application (simulator, world model, rollouts) is
:mod:`dpokit.apps.amrs`."""

from .models import NUM_MODES, NUM_SIGNALS, NextItemModel, SessionEncoder
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

__all__ = ["NUM_MODES", "NUM_SIGNALS", "Context", "ItemPair", "ItemSequence", "NextItemModel",
           "SessionBatch", "SessionEncoder", "SessionPolicy", "collate_pairs",
           "collate_sequences", "load_session_policy"]
