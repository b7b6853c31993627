"""Stop at a step boundary on SIGINT / SIGTERM (what a scheduler sends before a kill).

The first signal is recorded and the loop saves a checkpoint after the current step, then
raises :class:`Interrupted` (exit status 128 + signal: 130 / 143); a second Ctrl-C stops at once.

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
    """SIGINT / SIGTERM stopped the run at a step boundary, after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; "
                         f"checkpoint saved to {checkpoint}; continue with resume=true")


class StopRequests:
    """Records SIGINT / SIGTERM while :meth:`installed` is active (main thread only)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"{signal.Signals(signum).name}: saving a checkpoint after this step "
                 f"(Ctrl-C again to stop at once)")

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
