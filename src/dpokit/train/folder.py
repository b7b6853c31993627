"""The output folder is owned by one run: checked before any compute, locked while a run
writes it, and never silently mixed with another run's checkpoints, final model or metrics.

    >>> folder = RunFolder("outputs/run")   # doctest: +SKIP
    >>> folder.check_usable()               # doctest: +SKIP
    >>> with folder.locked():               # doctest: +SKIP
    ...     folder.claim(resume=False, overwrite=False)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".dpokit.lock"
STAGING = (".staging-*", ".old-*")


class OutputDirError(RuntimeError):
    """The output folder cannot be used by this run; the message says why and what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunFolder:
    """``output_dir`` as one run's property.

    is_main: this process writes (other data-parallel processes only read)."""

    def __init__(self, path: str | Path, is_main: bool = True,
                 log: Callable[[str], None] = print):
        self.path, self.is_main, self.log = Path(path), is_main, log
        self._held = False

    def check_usable(self) -> None:
        """Refuse a path that is a file or a folder this process cannot write, before any
        compute is spent."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputDirError(f"output_dir {self.path} is a file, not a folder")
        existing = next((p for p in [self.path, *self.path.parents] if p.exists()), Path("."))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputDirError(f"output_dir {self.path} is not writable ({existing} is not)")

    # --- the lock ------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock file (pid, host, time) while the block runs; a lock left by
        a dead process on this host is taken over; a live one is refused."""
        if not self.is_main or self._held:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                self._take_over_if_stale(lock)
        else:
            raise OutputDirError(f"could not lock {self.path}")
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
        self._held = True
        try:
            yield
        finally:
            self._held = False
            lock.unlink(missing_ok=True)

    def _take_over_if_stale(self, lock: Path) -> None:
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            owner = {}
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            self.log(f"output_dir {self.path}: taking over the lock of process {pid}, which "
                     f"is gone")
            lock.unlink(missing_ok=True)
            return
        if not owner:
            raise OutputDirError(f"output_dir {self.path} has an unreadable lock file {lock}; "
                                 f"if no run is using the folder, delete it")
        who = f"process {pid} on {host}"
        raise OutputDirError(f"output_dir {self.path} is being written by another run ({who}); "
                             f"wait for it, or use another output_dir" + (
                                 "" if host == socket.gethostname() else
                                 f" (if that run is gone, delete {lock})"))

    # --- ownership -----------------------------------------------------------------------------
    def clean_staging(self) -> None:
        """Remove staging folders a killed run left behind (never a complete checkpoint); a
        folder set aside by a swap that was killed halfway is put back."""
        for root in (self.path, self.path / "checkpoints"):
            for pattern in STAGING:
                for leftover in sorted(root.glob(pattern)) if root.is_dir() else []:
                    original = root / leftover.name[len(".old-"):].rsplit("-", 1)[0]
                    if leftover.name.startswith(".old-") and not original.exists():
                        os.replace(leftover, original)
                        self.log(f"restored {original}, set aside by an interrupted save")
                        continue
                    shutil.rmtree(leftover, ignore_errors=True)
                    self.log(f"removed {leftover}, left by an interrupted save")

    def previous_run(self) -> list[str]:
        """What an earlier run left here: complete checkpoints, final/, metrics."""
        found = []
        checkpoints = self.path / "checkpoints"
        if checkpoints.is_dir() and any((p / "state.json").is_file()
                                        for p in checkpoints.glob("step-*")):
            found.append("checkpoints/")
        if (self.path / "final").exists():
            found.append("final/")
        return found

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse to start over another run's results unless told to resume or overwrite."""
        if not self.is_main:
            return
        self.clean_staging()
        found = self.previous_run()
        if resume and "checkpoints/" in found:
            return
        if found and not overwrite:
            hint = ("resume=true continues its checkpoints, " if "checkpoints/" in found
                    else "")
            raise OutputDirError(f"output_dir {self.path} holds another run's "
                                 f"{' and '.join(found)}; {hint}overwrite_output_dir=true "
                                 f"replaces it, or choose another output_dir")
        for name in ("checkpoints", "final", "metrics.jsonl"):
            target = self.path / name
            if target.exists():
                if name != "metrics.jsonl" or found:
                    self.log(f"overwrite_output_dir: removing {target}")
                else:
                    self.log(f"{target} of an earlier run that left no checkpoint is replaced")
                shutil.rmtree(target) if target.is_dir() else target.unlink()
