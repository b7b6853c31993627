"""Stop cleanly on SIGINT / SIGTERM (what a scheduler sends before a kill), in every phase.

Inside a :func:`cooperative` region (training, the reference pass, evaluation, sampling,
writing rows) the first signal is recorded and the loop checks it between batches
(:func:`stop_point`): training saves a checkpoint after the current step, the reference pass
keeps the batches it finished (the next start resumes them), evaluation, sampling and pair
building stop within one batch. Elsewhere it stops at once (outputs are written through
temporary files, so nothing half-written replaces a file). Then :class:`Interrupted` says what
was kept, and the command exits with 128 + signal (130 / 143). A second Ctrl-C stops at once.

    >>> stop = StopRequests(print)
    >>> with stop.installed():
    ...     stop.requested
    False
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class Interrupted(RuntimeError):
    """SIGINT / SIGTERM stopped a phase between two batches; ``kept`` says what survives
    (training: the checkpoint saved at the step boundary, ``checkpoint`` and ``step``)."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None,
                 *, phase: str = "training", kept: str | None = None):
        self.signum, self.step, self.checkpoint, self.phase = signum, step, checkpoint, phase
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM
        name = signal.Signals(signum).name
        if checkpoint is not None:
            message = (f"stopped by {name} after step {step}; checkpoint saved to {checkpoint}; "
                       f"continue with resume=true")
        else:
            message = f"stopped by {name} during {phase}; {kept or 'nothing was saved'}"
        super().__init__(message)


class _State:
    signum: int | None = None
    depth = 0  # nested installs (the command line, then the trainer) share one handler
    cooperative = 0  # > 0 inside a loop that calls stop_point between batches
    log: Callable[[str], None] = print


_STATE = _State()


def stop_point(phase: str, kept: str | Callable[[], str] = "nothing was saved") -> None:
    """Raise :class:`Interrupted` if a stop was requested; long phases call it between
    batches. ``kept``: what survives (a callable runs only when stopping, e.g. to save)."""
    if _STATE.signum is not None:
        raise Interrupted(_STATE.signum, phase=phase, kept=kept() if callable(kept) else kept)


@contextmanager
def cooperative() -> Iterator[None]:
    """A region whose loop calls :func:`stop_point` between batches: a signal inside it is
    recorded and acted on at the next stop point, not raised where it lands."""
    _STATE.cooperative += 1
    try:
        yield
    finally:
        _STATE.cooperative -= 1


class StopRequests:
    """Records SIGINT / SIGTERM while :meth:`installed` is active (main thread only)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    @property
    def signum(self) -> int | None:
        return _STATE.signum

    @property
    def requested(self) -> bool:
        return _STATE.signum is not None

    @staticmethod
    def _handle(signum, frame) -> None:
        if _STATE.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _STATE.signum = signum
        if not _STATE.cooperative:  # no loop will look: stop here
            raise Interrupted(signum, phase="a step that does not stop halfway",
                              kept="files are written through temporary files, so earlier "
                                   "outputs are intact")
        _STATE.log(f"{signal.Signals(signum).name}: stopping after this batch or step, keeping "
                   f"what is finished (Ctrl-C again to stop at once)")

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        if _STATE.depth:  # an outer caller (the command line) already listens
            _STATE.depth += 1
            try:
                yield
            finally:
                _STATE.depth -= 1
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        _STATE.signum, _STATE.depth, _STATE.log = None, 1, self.log
        try:
            yield
        finally:
            _STATE.signum, _STATE.depth = None, 0
            for s, h in previous.items():
                signal.signal(s, h)
