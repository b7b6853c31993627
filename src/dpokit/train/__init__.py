"""The generic training loop and its services (sources, reference, checkpoints, resume,
signals, launch, metrics, optimizer). Never imports a modality."""

from ..core.signals import Interrupted
from .loop import NonFiniteError, Trainer, TrainResult, make_trainer
from .resume import ResumeMismatch
from .setup import LoopParts, build_parts
from .sources import EvalSet, StaticSource, sequential_batches
from .streaming import StreamingSource

__all__ = ["EvalSet", "Interrupted", "LoopParts", "NonFiniteError", "ResumeMismatch",
           "StaticSource", "StreamingSource", "TrainResult", "Trainer", "build_parts",
           "make_trainer", "sequential_batches"]
