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

What a layer holds on the process's background loop (``_common.background``), which outlives any
one layer, is also held by that loop until it closes it: a layer dropped without ``close()``
(replaced in a test's settings, say) leaves no task to be destroyed while pending.

A loop can also be closed without its tasks being cancelled (``loop.run_until_complete(...)``
then ``loop.close()``, as scripts and some test runners do). Nothing of such a loop can run
again, so nothing may depend on a ``finally`` of its tasks: the next time the layer is used on
any loop, :class:`PerLoop` finds the closed loop and calls :meth:`LoopOwned.abandon`, which
releases its connections without the loop (:func:`release_dead`: the server sees each one
close, which also ends a blocking pop still waiting there) and silences its tasks, so they
vanish without a word when they are collected. One log line says it happened.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
import threading
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, TypeVar

from .background import background
from .log import RateLimitedLog

logger = logging.getLogger(__name__)


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

    @abc.abstractmethod
    def _abandon(self) -> None:
        """Release this loop's connections and silence its tasks, without the loop, which was
        closed under them (see :func:`release_dead` and :func:`quiet`)."""

    def abandon(self) -> None:
        """Called once the loop is found closed without this having been closed."""
        quiet(self._keeper)
        if isinstance(self._closing, asyncio.Task):
            quiet(self._closing)  # a close() the loop did not let finish
        self._on_closed()
        self._abandon()

    async def _keep(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self._keeping = False
            if self._closing is None:  # else aclose() is already running, and cancelled us
                await self.aclose()
            raise

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


def quiet(task: asyncio.Task[Any]) -> None:
    """Let a task of a closed loop be collected without "Task was destroyed but it is
    pending!": it can never run again, and what it held is released elsewhere."""
    task._log_destroy_pending = False  # type: ignore[attr-defined]


def release_dead(connection: Any) -> None:
    """Close a valkey-py connection whose event loop was closed while it was open.

    asyncio has no public way to close a transport without its loop (``close()`` schedules
    the socket's closing on the loop, which raises once the loop is closed), so this shuts the
    socket down, which the server sees at once (ending any blocking command it still runs for
    this connection), and closes the socket under the transport, so that nothing is left for
    the garbage collector to warn about.
    """
    writer = getattr(connection, "_writer", None)
    if writer is None:
        return
    connection._reader = connection._writer = None
    transport = writer.transport
    raw = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    for each in (transport, raw):
        if each is not None:
            with contextlib.suppress(RuntimeError):
                each.close()  # marks it closing; what it schedules on the loop cannot run
    transport = raw if raw is not None else transport  # TLS: the stream's wraps the socket's
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    transport._sock = None


class PerLoop(Generic[Owned]):
    """Finds, or makes with ``make(on_closed)``, the object of the running loop.

    Loops of several threads use one layer (the server's, ``async_to_sync`` calls, the
    background loop of ``sync``), so changes to the registry and the sweep take a lock."""

    def __init__(
        self,
        make: Callable[[Callable[[], None]], Owned],
        on_dead_loop: Callable[[asyncio.AbstractEventLoop, Owned], None] | None = None,
    ) -> None:
        """``on_dead_loop(loop, owned)`` lets the layer forget what else it keeps for a loop
        that was closed without cleanup (before ``owned`` is abandoned)."""
        self._make = make
        self._on_dead_loop = on_dead_loop
        self._abandoned_log = RateLimitedLog(logger)
        self._lock = threading.RLock()  # re-entered: abandon() forgets its own entry
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Owned] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> Owned:
        loop = asyncio.get_running_loop()
        owned = self._by_loop.get(loop)
        if owned is not None and len(self._by_loop) == 1:
            return owned  # the common case: one loop, alive since it is running
        with self._lock:
            self._sweep()
            owned = self._by_loop.get(loop)
            if owned is None:
                # A weak reference: the entry must not keep its own key (the loop) alive.
                owned = self._make(partial(self._forget, weakref.ref(loop)))
                self._by_loop[loop] = owned
                if background.runs_here():
                    background.hold(owned)
        return owned

    def _sweep(self) -> None:
        """Abandon what the layer holds on loops that were closed without cleanup."""
        dead = [(loop, owned) for loop, owned in self._by_loop.items() if loop.is_closed()]
        for loop, owned in dead:
            if self._on_dead_loop is not None:
                self._on_dead_loop(loop, owned)
            owned.abandon()
            self._abandoned_log.warning(
                "An event loop was closed while %r was still open on it (its tasks were not "
                "cancelled); released its connections",
                owned,
            )

    def existing(self) -> Owned | None:
        """The running loop's object, without making one."""
        return self._by_loop.get(asyncio.get_running_loop())

    def _forget(self, loop_ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        loop = loop_ref()
        if loop is not None:
            with self._lock:
                owned = self._by_loop.pop(loop, None)
            if owned is not None:
                background.let_go(owned)

    async def close_current(self) -> None:
        owned = self.existing()
        if owned is not None:
            await owned.aclose()
