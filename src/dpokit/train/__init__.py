"""The generic training loop and its services (sources, reference, checkpoints, launch,
metrics, optimizer). Never imports a modality."""

from .loop import Interrupted, NonFiniteError, ResumeMismatch, Trainer, TrainResult
from .sources import EvalSet, StaticSource, sequential_batches

__all__ = ["EvalSet", "Interrupted", "NonFiniteError", "ResumeMismatch", "StaticSource",
           "TrainResult", "Trainer", "sequential_batches"]
