"""A clock that moves only when a test says so, for the pure modules that read the time.

It stands in for the ``time`` module (``time()``, ``monotonic()``, monkeypatched onto the
module under test) or for a clock function (calling it), so a test about intervals, stalls
or expiry never waits.
"""

from __future__ import annotations


class Clock:
    """Wall and monotonic time in one value, ``now``, moved by :meth:`advance`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
