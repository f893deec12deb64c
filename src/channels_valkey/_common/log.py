"""Rate-limited warnings, for events that can repeat thousands of times a second."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs at most one line per ``interval`` seconds, counting what it held back.

    A full buffer or a dead server can produce an event per message; one line a minute with
    a count tells the operator as much without flooding the log.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next = 0.0
        self._held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            msg += " (%d similar events not logged in the last %.0f s)"
            args = (*args, self._held, self._interval)
        self._logger.warning(msg, *args)
        self._next = now + self._interval
        self._held = 0
