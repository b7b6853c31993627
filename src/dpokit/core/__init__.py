"""The bottom layer: value types and protocols every other layer shares. Needs only torch."""

from .protocols import (
    BasePolicy,
    Batch,
    DataSource,
    Objective,
    ObjectiveOutput,
    Policy,
    PolicyCapabilities,
    PolicyDescription,
    Regularizer,
    RegularizerOutput,
    ShardSettings,
    StatelessObjective,
)
from .types import LossOutput, MetricSums, PairLogps, SequenceScores

__all__ = ["BasePolicy", "Batch", "DataSource", "LossOutput", "MetricSums", "Objective",
           "ObjectiveOutput", "PairLogps", "Policy", "PolicyCapabilities", "PolicyDescription",
           "Regularizer", "RegularizerOutput", "SequenceScores", "ShardSettings",
           "StatelessObjective"]
