"""One run of an operation at a time, shared by whoever asks for it meanwhile.

Reading a cluster's slot map is the case: many commands (or subscriptions) can find the map
stale at once, and one read serves them all. Callers that come while a run is in progress
join it and get its outcome; the next caller after it ends starts a new run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from .per_loop import quiet


class SingleFlight:
    """Runs ``operation()`` as one task at a time (see the module).

    The task belongs to the owner of this object, not to a caller: a cancelled caller leaves
    it running for the others. On closing, the owner can wait for it (:meth:`finish`), and
    silences it (:meth:`abandon`) when its event loop was closed under it. A run's error
    reaches every caller that awaits it; a run nobody awaits (one started in the background)
    has its error dropped, and the next run reports its own.
    """

    def __init__(self, operation: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._operation = operation
        self._running: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """The run in progress, or a new one."""
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._operation())
            self._running.add_done_callback(self._ended)
        return self._running

    async def __call__(self) -> None:
        """Run the operation, or join the run in progress; raises what it raised."""
        await asyncio.shield(self.start())

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running = None
        if not task.cancelled():
            task.exception()  # seen: reported to the callers that awaited it, if any

    async def finish(self) -> None:
        """Wait for the run in progress to end, whatever its outcome."""
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)

    def abandon(self) -> None:
        """Silence the run in progress: its event loop was closed under it."""
        if self._running is not None:
            quiet(self._running)
