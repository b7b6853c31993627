"""The generic training loop and its services (sources, reference, checkpoints, resume,
signals, launch, metrics, optimizer). Never imports a modality."""

from ..core.signals import Interrupted
from .loop import NonFiniteError, Trainer, TrainResult
from .resume import ResumeMismatch
from .sources import EvalSet, StaticSource, sequential_batches
from .streaming import StreamingSource

__all__ = ["EvalSet", "Interrupted", "NonFiniteError", "ResumeMismatch", "StaticSource",
           "StreamingSource", "TrainResult", "Trainer", "sequential_batches"]
