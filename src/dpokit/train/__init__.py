"""The generic training loop and its services (sources, reference, checkpoints, launch,
metrics, optimizer). Never imports a modality."""

from .loop import NonFiniteError, Trainer, TrainResult
from .sources import EvalSet, StaticSource, sequential_batches

__all__ = ["EvalSet", "NonFiniteError", "StaticSource", "TrainResult", "Trainer",
           "sequential_batches"]
