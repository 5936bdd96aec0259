"""When a run writes a checkpoint: every N steps, every T seconds, and on SIGINT/SIGTERM.

A first SIGINT/SIGTERM asks the loop to stop after the current step (with a checkpoint, so ``--resume``
continues to the same result); a second one stops at once. The time trigger bounds what a kill -9 (an
OOM kill, a pre-empted node) loses on a run whose steps are slow or few, where a step count alone
would leave the last checkpoint far behind.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable


class StopRequest:
    """Catches SIGINT/SIGTERM while active (a context manager) and restores the previous handlers."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be handled on the main thread

        def handler(signum, frame):
            if self.requested:  # second signal: stop now
                raise KeyboardInterrupt
            self.requested = True

        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old:
            for s, h in self._old.items():
                signal.signal(s, h)
            self._old = None


class CheckpointSchedule:
    """Due every ``every_steps`` steps or ``every_s`` seconds since the last checkpoint, whichever first.

    ``clock`` is injectable (tests), monotonic by default: a wall-clock jump must not trigger or
    suppress a checkpoint.
    """

    def __init__(self, every_steps: int, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.every_steps, self.every_s, self.clock = int(every_steps), float(every_s), clock
        self.last = clock()

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0 or self.clock() - self.last >= self.every_s

    def saved(self) -> None:
        self.last = self.clock()
