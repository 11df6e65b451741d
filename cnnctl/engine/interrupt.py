"""Ctrl-C (SIGINT) and SIGTERM during training: finish the current batch, save, say how to resume, exit 130/143.

The first signal only sets a flag that the training loop reads after each batch; a second one raises
``KeyboardInterrupt`` at once (the state of the last finished epoch is on disk either way).
"""

from __future__ import annotations

import atexit
import shlex
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from cnnctl.errors import CnnctlError


class TrainingInterrupted(CnnctlError):
    """Training stopped on a signal after saving; the message holds the exact command that continues it."""

    exit_code = 130


def resume_command(run_dir: Path, processes: int = 1) -> str:
    return f"cnnctl train --resume {shlex.quote(str(run_dir))}" + (f" --nproc {processes}" if processes > 1 else "")


def interrupted_error(run_dir: Path, where: str, signum: int | None, processes: int = 1) -> TrainingInterrupted:
    error = TrainingInterrupted(f"interrupted {where}; the training state is saved — continue with: "
                                f"{resume_command(run_dir, processes)}")
    error.exit_code = 128 + (signum or signal.SIGINT)
    return error


class InterruptGuard:
    """Context manager that turns SIGINT/SIGTERM into ``requested`` (the signal number) for the loop to check.

    Only the main thread can own signal handlers; elsewhere (a training run inside a worker thread) the guard
    does nothing and Ctrl-C behaves as usual.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)

    def __init__(self, on_first: Any = None):
        self.requested: int | None = None
        self.on_first = on_first
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        if self.on_first is not None:
            self.on_first(signum)

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self.requested is not None and self._previous:
            _ignore_signals_at_exit()
        self._previous.clear()


_exit_guard_registered = False


def _ignore_signals_at_exit() -> None:
    """Training stopped on a signal: a further Ctrl-C while the interpreter shuts down (the user pressing it
    twice) must not interrupt the exit callbacks of torch and others, which Python would report as
    "Exception ignored in atexit callback" with a traceback. Registered last, so it runs first at exit."""
    global _exit_guard_registered
    if _exit_guard_registered:
        return
    _exit_guard_registered = True

    def ignore() -> None:
        for signum in InterruptGuard.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    atexit.register(ignore)
