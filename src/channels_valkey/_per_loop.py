"""Per-event-loop ownership, shared by both layers.

valkey-py connections belong to the event loop that opened them, and Django code often runs a
layer on short-lived loops (``async_to_sync`` in a view, a signal or a Celery task starts and
closes a loop per call). So each layer keeps one :class:`LoopOwned` object per loop, found
through :class:`PerLoop`.

Closing without the user calling ``close()``: every :class:`LoopOwned` starts a *keeper* task
that waits forever. ``asyncio.run()`` and ``async_to_sync`` cancel all remaining tasks before
they close their loop, so the keeper's cancellation is the signal to release the loop's
connections and tasks while the loop can still run the I/O. No monkeypatching of
``loop.close``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import weakref
from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar


class LoopOwned(abc.ABC):
    """What a layer holds on one event loop; :meth:`aclose` releases it once, however often
    it is called, and the loop finishing calls it too."""

    def __init__(self, on_closed: Callable[[], None]) -> None:
        self._on_closed = on_closed
        self._closing: asyncio.Future[None] | None = None
        #: True while the keeper waits; False once its cancellation has started the close.
        self._keeping = True
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep(), name=f"channels_valkey {type(self).__name__} keeper"
        )

    @abc.abstractmethod
    async def _release(self) -> None:
        """Stop this loop's tasks and close its connections."""

    async def _keep(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self._keeping = False
            if self._closing is None:  # else aclose() is already running, and cancelled us
                await self.aclose()

    async def aclose(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._on_closed()
        await self._release()
        if self._keeping:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper


Owned = TypeVar("Owned", bound=LoopOwned)


class PerLoop(Generic[Owned]):
    """Finds, or makes with ``make(on_closed)``, the object of the running loop."""

    def __init__(self, make: Callable[[Callable[[], None]], Owned]) -> None:
        self._make = make
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Owned] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> Owned:
        loop = asyncio.get_running_loop()
        owned = self._by_loop.get(loop)
        if owned is None:
            # A weak reference: the entry must not keep its own key (the loop) alive.
            owned = self._make(partial(self._forget, weakref.ref(loop)))
            self._by_loop[loop] = owned
        return owned

    def existing(self) -> Owned | None:
        """The running loop's object, without making one."""
        return self._by_loop.get(asyncio.get_running_loop())

    def _forget(self, loop_ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        loop = loop_ref()
        if loop is not None:
            self._by_loop.pop(loop, None)

    async def close_current(self) -> None:
        owned = self.existing()
        if owned is not None:
            await owned.aclose()
