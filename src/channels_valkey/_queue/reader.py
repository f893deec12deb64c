"""A task that pops one queue with ``BZMPOP`` on a connection of its own.

Why a task of its own, and not the ``receive()`` call: a blocking pop that is abandoned half-way
loses whatever the server had already popped for it. ``receive()`` calls get cancelled all the
time (a websocket closes), so they only ever wait on a future (``_queue.mailbox``); the pop itself
runs here, and is never abandoned:

- the reader starts a pop only while a ``receive()`` waits for its queue, and pops no more
  than ``demand()`` allows (the room in the buffers of reading channels, see ``_queue.mailbox``);
  held back by a full buffer it waits for a ``poke()``; with nobody waiting it lingers
  ``block`` seconds for the next ``receive()``, then stops;
- when the task is cancelled (its event loop is shutting down) while a pop is in flight, it
  pushes a token to its *wake key*, which the same ``BZMPOP`` watches after the queue, so the
  pop returns at once; it reads that answer and hands on any messages before it stops;
- when its event loop was closed without cancelling it, :meth:`QueueReader.abandon` closes its
  connection, which ends the pop on the server;
- a dropped connection is reopened under the layer's retry policy (``_common.retry``); once its
  deadline has passed without success, the reader gives up and ``fail()`` reports
  :class:`ServerUnreachable` to the waiters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import MovedError

from channels_valkey._common.connections import REDIRECT_ERRORS
from channels_valkey._common.log import RateLimitedLog
from channels_valkey._common.per_loop import quiet, release_dead
from channels_valkey._common.retry import TRANSIENT_ERRORS, Outage
from channels_valkey.exceptions import ServerUnreachable
from channels_valkey.stats import StatsRecorder

from .mailbox import Demand
from .shard import QueueServer

logger = logging.getLogger(__name__)

#: Seconds a reader waits after putting back a message this process cannot decode, so that a
#: process that can takes it.
UNUSABLE_PAUSE = 1.0


@dataclass(frozen=True)
class Popped:
    """One message as the server handed it over: bytes and send time (its score)."""

    payload: bytes
    sent_at: float


class QueueReader:
    def __init__(
        self,
        shard: QueueServer,
        queue: str,
        wake_key: str,
        *,
        batch: int,
        block: float,
        demand: Callable[[str, int], Demand],
        deliver: Callable[[list[Popped]], Awaitable[bool]],
        fail: Callable[[BaseException], None],
        stats: StatsRecorder,
    ) -> None:
        """``deliver`` hands a batch on and returns ``False`` when a message went back to
        Valkey because this process could not use it: the reader then pauses, so that
        another process can take it."""
        self.shard = shard
        self.queue = queue
        self._wake_key = wake_key
        self._batch = batch
        self._block = block
        self._connection: AbstractConnection | None = None
        self._packed: dict[int, list[bytes]] = {}  # BZMPOP by count, as the connection encodes it
        self._demand = demand
        self._deliver = deliver
        self._fail = fail
        self._stats = stats
        self._stopping = False
        #: Set while waiting for demand: resolved True by poke() or stop().
        self._poked: asyncio.Future[bool] | None = None
        self._warnings = RateLimitedLog(logger, interval=10.0)
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._run(), name=f"channels_valkey reader {queue}"
        )

    def __repr__(self) -> str:
        return f"<QueueReader {self.queue} on {self.shard!r}>"

    def poke(self) -> None:
        """A ``receive()`` waits again, or a full buffer has room: look at the demand again."""
        _resolve(self._poked, True)

    @property
    def wake_key(self) -> str:
        return self._wake_key

    @property
    def running(self) -> bool:
        return not self.task.done()

    async def stop(self) -> None:
        """Stop after the pop in flight, which a wake token ends at once."""
        if self.task.done():
            return
        self._stopping = True
        _resolve(self._poked, True)
        try:
            await self.shard.wake(self._wake_key, 1)
        except TRANSIENT_ERRORS:
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def abandon(self) -> None:
        """Release what this reader holds after its event loop was closed under it: closing
        the connection ends its pop on the server, so the pop takes nothing more."""
        quiet(self.task)
        if self._connection is not None:
            release_dead(self._connection)
            self._connection = None
        self._stats.closed(self)

    async def _run(self) -> None:
        try:
            await self._read()
        except GeneratorExit:
            raise  # its loop was closed under it: abandon() releases the connection
        except BaseException:
            await self._disconnect()
            self._stats.closed(self)
            raise
        await self._disconnect()
        self._stats.closed(self)

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()

    async def _read(self) -> None:
        failing_since: float | None = None
        last_error: Exception | None = None
        while count := await self._next_count():
            try:
                if self._connection is None:  # on a cluster, looking the node up can fail too
                    self._connection = await self._connect(last_error)
                batch = await self._pop(self._connection, count)
            except REDIRECT_ERRORS as error:
                await self._disconnect()
                last_error = error
                if isinstance(error, MovedError):
                    continue  # the slot moved: follow it at once, nothing is wrong
                self._stats.disconnected(self)
                failing_since = failing_since or time.monotonic()
                if not await self._back_off(failing_since, error):
                    return
                continue
            except Exception as error:  # a server refusal: retrying would not help
                self._fail(error)
                return
            if failing_since is not None:
                self._stats.reconnected(self)
            failing_since = last_error = None
            if batch and not await self._deliver_safely(batch):
                await self._hold(UNUSABLE_PAUSE)

    async def _next_count(self) -> int:
        """How many entries to pop next; 0 once nobody has waited for ``block`` seconds (or
        the reader is stopping)."""
        while not self._stopping:
            demand = self._demand(self.queue, self._batch)
            if demand.count:
                return demand.count
            idle = demand.recheck is None
            poked = await self._pause(self._block if idle else cast(float, demand.recheck))
            if idle and not poked:
                return 0
        return 0

    async def _pause(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a ``poke()``; whether one came. (One future and one
        timer: this runs whenever nobody waits after a delivery.)"""
        loop = asyncio.get_running_loop()
        poked: asyncio.Future[bool] = loop.create_future()
        self._poked = poked
        timer = loop.call_later(seconds, _resolve, poked, False)
        try:
            return await poked
        finally:
            timer.cancel()
            self._poked = None

    async def _hold(self, seconds: float) -> None:
        """Pause for ``seconds`` whatever the ``receive()`` calls do (each would poke), so
        that another process gets the message this one put back; only ``stop()`` ends it
        early."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            await self._pause(left)

    async def _deliver_safely(self, batch: list[Popped]) -> bool:
        """Hand on a batch; a failure there is logged and the reader goes on, because the
        receive() calls waiting on it would otherwise wait forever."""
        try:
            return await self._deliver(batch)
        except Exception:
            logger.exception(
                "Could not hand on %d message(s) popped from %s", len(batch), self.queue
            )
            return True

    async def _connect(self, last_error: Exception | None) -> AbstractConnection:
        connection = await self.shard.reader_connection(self.queue, after=last_error)
        # Connected under the host's own timeouts, so a server that accepts and then says
        # nothing fails the handshake as quickly as any command would.
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await connection.disconnect()
            raise
        # The server answers a blocking pop after `block` seconds at the latest; reading longer
        # than that (plus slack for a busy server) means the connection is dead.
        connection.socket_timeout = self._block + 10
        self._packed.clear()
        return connection

    #: The failed reconnections since the connection was lost at ``Outage.started``.
    _outage: Outage | None = None

    async def _back_off(self, failing_since: float, error: Exception) -> bool:
        """Wait before the next attempt; ``False`` (after failing the waiters) once it is time
        to give up."""
        outage = self._outage
        if outage is None or outage.started != failing_since:  # a new loss of the connection
            outage = self._outage = Outage(failing_since)
        delay = outage.next_pause()
        if delay is None:
            self._fail(ServerUnreachable(self.shard.host.describe(), error))
            return False
        self._warnings.warning(
            "Lost the connection to %s while reading %s (%s); reconnecting",
            self.shard.host.describe(),
            self.queue,
            error,
        )
        await asyncio.sleep(delay)
        return True

    async def _pop(self, connection: AbstractConnection, count: int) -> list[Popped]:
        packed = self._packed.get(count)
        if packed is None:
            packed = self._packed[count] = connection.pack_command(
                "BZMPOP", self._block, 2, self.queue, self._wake_key, "MIN", "COUNT", count
            )
        await connection.send_packed_command(packed)
        try:
            reply = await connection.read_response(disconnect_on_error=False)
        except asyncio.CancelledError:
            await self._finish_after_cancel(connection)
            raise
        return self._parse(reply)

    async def _finish_after_cancel(self, connection: AbstractConnection) -> None:
        """The server may have popped for us already: wake the pop and keep what it returns."""
        try:
            await self.shard.wake(self._wake_key, 1)
            reply = await asyncio.wait_for(
                connection.read_response(disconnect_on_error=False),
                timeout=5,
            )
            batch = self._parse(reply)
            if batch:
                await self._deliver(batch)
        except Exception as error:
            logger.warning("Could not finish the last read of %s on close: %s", self.queue, error)

    def _parse(self, reply: object) -> list[Popped]:
        """``BZMPOP`` answers ``nil`` or ``[key, [[member, score], ...]]``."""
        if reply is None:
            return []
        key, items = cast("tuple[bytes, list[tuple[bytes, bytes]]]", reply)
        if key != self.queue.encode("utf8"):
            return []  # a wake token
        return [Popped(payload, float(score)) for payload, score in items]


def _resolve(future: asyncio.Future[bool] | None, value: bool) -> None:
    if future is not None and not future.done():
        future.set_result(value)
