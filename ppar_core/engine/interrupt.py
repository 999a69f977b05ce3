"""Stopping a training run cleanly: Ctrl-C asks the loop to stop at the next step boundary (it then saves a
checkpoint); a second Ctrl-C aborts at once."""

from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """A context manager that turns SIGINT into `requested = True` while it is active (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
