"""The hot path's commands: every non-blocking command of one event loop to one server, on
one connection, pipelined.

Why one connection: a connection per concurrent command (what a pool gives) makes the number
of connections grow with load (200 tasks sending at once, 200 connections, on every process),
and each command its own write and its own read. Here, the first command of a turn of the event
loop is written at once (a lone command waits for nothing), the commands that other tasks issue
during the rest of that turn together, in one write at its end; their replies are read back in
order, as the bytes arrive (:class:`_Replies`, with libvalkey) or by the link's task (without
it): the reply to the n-th command written is the n-th reply read, so a queue of waiting calls
is the whole protocol (valkey-glide, ioredis and lettuce multiplex the
same way). More concurrency means bigger writes, not more connections.

Ownership and endings:

- a :class:`Lane` (one per server, per event loop) owns its current :class:`_Link`: one
  connection from connect to failure, and the task that connects it and, once it ends, closes
  it (without libvalkey, the task also reads the replies). A
  link that fails is dropped; the next command makes a new one. ``aclose()`` ends the link once
  the commands in flight have their replies; a loop closed under it is handled by
  :meth:`Lane.abandon` (see ``_common.per_loop``);
- a caller that is cancelled while its command waits to be written takes it out (it is never
  sent); once written, its reply is read and dropped, so no other command can read it and the
  connection stays in step;
- a connection error fails every command waiting on that link; each caller then tries again on
  a new link under the layer's retry policy (``_common.retry``: backoff until a deadline), then
  raises the error. A command written before the connection failed may have run: it is sent again
  all the same (at least once), as any client must;
- a reply that does not come within ``socket_timeout`` fails the link like a connection error
  (a watchdog timer while replies are due, or the task's read);
- health check (``_common.health``): a link that wrote nothing for ``health_check_interval`` seconds
  sends a ``PING`` first and holds the waiting commands until its answer, so a connection that
  a load balancer dropped in silence costs a probe timeout, not a lost command and a read
  timeout.

The connection is made by the server's valkey-py pool (``pool.make_connection()``: TLS,
Sentinel lookup, unix sockets, ``AUTH``/``HELLO``/``SELECT`` are the pool's), and read with
valkey-py's reply parser; writes go straight to its stream, since valkey-py's
``send_packed_command`` starts a task per call to time it out. Replies are returned as the
server sent them (bytes, ints, lists), without valkey-py's response callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from valkey.asyncio import ConnectionPool
from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import ResponseError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from .health import probe_interval, probe_timeout
from .per_loop import quiet, release_dead
from .retry import TRANSIENT_ERRORS, Outage

# valkey-py's libvalkey reply reader, when libvalkey is installed (see _Replies). valkey-py has
# no public name for the parser class or its "not enough data" marker.
try:
    from valkey._parsers.libvalkey import NOT_ENOUGH_DATA, _AsyncLibvalkeyParser
except ImportError:  # pragma: no cover - a valkey-py without it
    _AsyncLibvalkeyParser = None  # type: ignore[assignment,misc]
    NOT_ENOUGH_DATA = object()


class Lane:
    """The non-blocking commands of one event loop to one server."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._link: _Link | None = None
        #: Every link whose task has not ended: the current one, and failed ones still
        #: closing their connection.
        self._links: set[_Link] = set()
        self._closed = False

    async def execute_command(self, *args: Any) -> Any:
        """Send one command and return its reply (an error reply raised as its exception)."""
        (reply,) = await self._exchange([args])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send several commands in one write (a pipeline, without ``MULTI``) and return their
        replies in order, an error reply as its exception. They run in the order given, with
        no other command between them; after a connection error all are sent again, like one
        command."""
        return await self._exchange(commands)

    async def _exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Queue ``commands`` on the current link and wait for their replies. After a
        connection error, try again on a new link until the policy's deadline, then raise."""
        started = time.monotonic()  # the deadline counts from the first attempt
        outage: Outage | None = None
        while True:
            link = self._current()
            try:
                return await link.call(commands)
            except TRANSIENT_ERRORS:
                outage = outage or Outage(started)
                delay = outage.next_pause()
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    def _current(self) -> _Link:
        link = self._link
        if link is None or link.failed:
            link = self._link = _Link(self._pool.make_connection(), self)  # type: ignore[no-untyped-call]
            self._links.add(link)
        return link

    @property
    def closing(self) -> bool:
        return self._closed

    def dropped(self, link: _Link) -> None:
        """``link`` failed (or was closed when idle): the next command makes a new one."""
        if self._link is link:
            self._link = None

    def ended(self, link: _Link) -> None:
        """``link``'s task ended, its connection closed."""
        self._links.discard(link)

    async def script_load(self, source: str) -> None:
        await self.execute_command("SCRIPT", "LOAD", source)

    def connections(self) -> list[AbstractConnection]:
        """The connection of the current link, if any (for tests and tools)."""
        return [] if self._link is None else [self._link.connection]

    async def aclose(self) -> None:
        """Close the connection once the commands written on it have their replies. A command
        sent after this runs on a link of its own, closed as soon as it is idle."""
        self._closed = True
        link = self._link
        if link is not None:
            await link.close_when_idle()

    def abandon(self) -> None:
        """The event loop was closed under this lane: release its connections without it."""
        self._link = None
        for link in self._links:
            link.abandon()
        self._links.clear()


class _Call:
    """Commands queued together by one caller, and where their replies go."""

    __slots__ = ("future", "packed", "replies", "size")

    def __init__(self, packed: list[bytes], size: int, future: asyncio.Future[list[Any]]) -> None:
        self.packed = packed
        self.size = size
        self.future = future
        self.replies: list[Any] = []


class _Link:
    """One connection of a :class:`Lane`, from its connect to its failure or close: it writes
    the calls queued during a turn of the loop together and reads their replies in order."""

    def __init__(self, connection: AbstractConnection, lane: Lane) -> None:
        self.connection = connection
        self._lane = lane
        self._loop = asyncio.get_running_loop()
        #: Calls waiting to be written, and calls written, waiting for their replies.
        self._queued: list[_Call] = []
        self._sent: deque[_Call] = deque()
        self._flush_scheduled = False
        #: Set (with the error) once the link can no longer carry commands.
        self.failed: BaseException | None = None
        self._ready = False  # connected, and not waiting for a health-check PING
        self._probe_after = probe_interval(connection)
        self._last_write = time.monotonic()
        self._sent_one: asyncio.Future[None] | None = None  # wakes the reader task
        #: Set once the link has ended (see _fail).
        self._ended: asyncio.Future[None] = self._loop.create_future()
        #: The transport's reader of replies, once connected, when it can be used (else the
        #: task reads them).
        self._replies: _Replies | None = None
        self._reply_timeout = float(connection.socket_timeout or 0)
        self._waiting_since = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._task = self._loop.create_task(self._run(), name=f"channels_valkey lane {connection}")

    async def call(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if self.failed is not None:
            raise self.failed
        connection = self.connection
        packed = (
            connection.pack_command(*commands[0])
            if len(commands) == 1
            else connection.pack_commands(commands)
        )
        call = _Call(packed, len(commands), self._loop.create_future())
        self._queued.append(call)
        if self._ready and not self._flush_scheduled:
            # The first command of a turn of the loop goes out at once; those that other
            # tasks issue during the rest of the turn, together at its end.
            self._flush_scheduled = True
            self._write_queued()
            self._loop.call_soon(self._flush)
        # A cancelled caller leaves its future cancelled: _write_queued skips it if it was
        # not written yet, _read_one drops its replies if it was.
        return await call.future

    def _flush(self) -> None:
        """End of a turn: write the calls queued during it, in one write."""
        self._flush_scheduled = False
        self._write_queued()

    def _write_queued(self) -> None:
        """Write every queued call in one write (the auto-pipelining)."""
        if not self._ready or self.failed is not None:
            return
        calls = [call for call in self._queued if not call.future.done()]
        self._queued.clear()
        if not calls:
            return
        now = time.monotonic()
        if self._probe_after and now - self._last_write > self._probe_after:
            self._queued = calls
            self._start_probe()
            return
        self._write(calls, now)

    def _write(self, calls: list[_Call], now: float) -> None:
        chunks = [chunk for call in calls for chunk in call.packed]
        writer = self.connection._writer
        if writer is None:
            self._fail(ValkeyConnectionError(f"Connection to {self._where()} closed"))
            return
        if not self._sent:
            self._waiting_since = now
        self._sent.extend(calls)  # before writing: a failed write fails them too
        self._last_write = now
        if self._replies is not None and self._reply_timeout and self._watchdog is None:
            self._watchdog = self._loop.call_later(self._reply_timeout, self._watch)
        try:
            writer.writelines(chunks)
        except (OSError, RuntimeError) as error:
            self._fail(ValkeyConnectionError(f"Error writing to {self._where()}: {error}"))
            return
        if self._sent_one is not None and not self._sent_one.done():
            self._sent_one.set_result(None)

    def _start_probe(self) -> None:
        """Hold the queued calls behind a ``PING``; fail the link if it stays unanswered."""
        self._ready = False
        probe = _Call(self.connection.pack_command("PING"), 1, self._loop.create_future())
        timer = self._loop.call_later(probe_timeout(self.connection), self._probe_timed_out, probe)
        probe.future.add_done_callback(lambda _: self._probe_answered(timer))
        self._write([probe], time.monotonic())

    def _probe_answered(self, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if self.failed is None:
            self._ready = True
            self._flush()

    def _probe_timed_out(self, probe: _Call) -> None:
        if not probe.future.done():
            quiet_for = time.monotonic() - self._last_write
            self._fail(
                ValkeyTimeoutError(
                    f"No answer from {self._where()} to a health-check PING "
                    f"after {quiet_for:.0f} s of quiet"
                )
            )

    async def _run(self) -> None:
        """Connect, then read replies until the link fails or is closed when idle."""
        try:
            await self._serve()
        except asyncio.CancelledError:  # the loop is ending (asyncio.run, async_to_sync)
            self._fail(ValkeyConnectionError(f"Connection to {self._where()} closed"))
            raise
        finally:
            await self._disconnect()
            self._lane.ended(self)

    async def _serve(self) -> None:
        try:
            await self.connection.connect()  # type: ignore[no-untyped-call]
        except Exception as error:  # a connection error, or a refusal (AUTH, ACL) kept as is
            self._fail(error)
            return
        self._last_write = time.monotonic()
        self._replies = _Replies.take_over(self)
        self._ready = True
        self._flush()
        if self._replies is not None:
            self._close_if_done()  # closed while connecting, with nothing to send
            await self._ended  # the replies arrive through _Replies; _fail ends the link
            return
        try:
            while await self._wait_for_sent():
                self._read_one(await self._next_reply())
        except Exception as error:
            self._fail(error)

    async def _wait_for_sent(self) -> bool:
        """Wait until a reply is due; ``False`` once the link failed, or is idle and closed."""
        while not self._sent:
            if self.failed is not None:
                return False
            if self._lane.closing and not self._queued:
                self._fail(ValkeyConnectionError(f"Connection to {self._where()} closed"))
                return False
            self._sent_one = self._loop.create_future()
            await self._sent_one
        return True

    async def _next_reply(self) -> Any:
        try:
            return await self.connection.read_response()
        except ResponseError as error:
            return error  # a whole answer: the connection stays in step

    def _read_one(self, reply: Any) -> None:
        if not self._sent:
            self._fail(ValkeyConnectionError(f"{self._where()} sent a reply nobody asked for"))
            return
        self._waiting_since = time.monotonic()
        call = self._sent[0]
        call.replies.append(reply)
        if len(call.replies) == call.size:
            self._sent.popleft()
            if not call.future.done():  # else its caller was cancelled: the reply is dropped
                call.future.set_result(call.replies)
            if not self._sent and self._replies is not None:
                self._close_if_done()

    def _close_if_done(self) -> None:
        """End a link whose lane is closing, once nothing waits to be written or answered."""
        if self._lane.closing and not self._sent and not self._queued:
            self._fail(ValkeyConnectionError(f"Connection to {self._where()} closed"))

    def _watch(self) -> None:
        """Fail the link when the oldest reply due has not come within ``socket_timeout``
        (without a reader task, no read is there to time out)."""
        self._watchdog = None
        if not self._sent or self.failed is not None:
            return
        left = self._waiting_since + self._reply_timeout - time.monotonic()
        if left > 0:
            self._watchdog = self._loop.call_later(left, self._watch)
            return
        self._fail(ValkeyTimeoutError(f"Timeout reading from {self._where()}"))

    def _fail(self, error: BaseException) -> None:
        """End the link: every call on it gets ``error``; after a connection error its
        caller tries again on a new link, any other error (a refused ``AUTH``) it raises."""
        if self.failed is not None:
            return
        self.failed = error
        self._ready = False
        self._lane.dropped(self)
        if not self._ended.done():
            self._ended.set_result(None)
        if self._watchdog is not None:
            self._watchdog.cancel()
        writer = self.connection._writer
        if writer is not None:
            writer.close()  # a read still waiting on it ends now; the task then disconnects
        for call in [*self._sent, *self._queued]:
            if not call.future.done():
                call.future.set_exception(error)
        self._sent.clear()
        self._queued.clear()
        if self._sent_one is not None and not self._sent_one.done():
            self._sent_one.set_result(None)

    async def _disconnect(self) -> None:
        # Waits until the socket is closed, so that aclose() returns with nothing left open
        # even if the loop runs no more after it. Nothing is left to do for a connection
        # that fails to close.
        with contextlib.suppress(Exception):
            await self.connection.disconnect()

    async def close_when_idle(self) -> None:
        """Let the reader finish the calls written so far, then close the connection."""
        if self._sent_one is not None and not self._sent_one.done():
            self._sent_one.set_result(None)  # the reader sees the lane closing
        if self._replies is not None:
            self._close_if_done()
        await asyncio.wait({self._task})

    def abandon(self) -> None:
        quiet(self._task)
        release_dead(self.connection)

    def _where(self) -> str:
        return str(self.connection._host_error())


class _Replies(asyncio.Protocol):
    """Parses a link's replies as the bytes arrive and hands each to its call, so the caller
    wakes on the next turn of the loop: a reader task in between would cost every reply one
    turn more, which under a busy loop (a thousand consumers) is most of a command's time.

    It replaces the transport's protocol (asyncio's stream protocol) once valkey-py has
    connected and said hello, and uses the connection's libvalkey reply reader, so replies,
    error replies and their exception classes are valkey-py's. Without libvalkey (valkey-py's
    pure-Python parser reads from the stream), the link's task reads replies instead.
    """

    def __init__(self, link: _Link, reader: Any, stream: asyncio.BaseProtocol) -> None:
        self._link = link
        self._reader = reader
        self._stream = stream

    @classmethod
    def take_over(cls, link: _Link) -> _Replies | None:
        connection = link.connection
        parser = getattr(connection, "_parser", None)
        reader = getattr(parser, "_reader", None)
        writer = connection._writer
        stream = connection._reader
        if (
            _AsyncLibvalkeyParser is None
            or not isinstance(parser, _AsyncLibvalkeyParser)
            or reader is None
            or writer is None
            or stream is None
            or stream._buffer  # type: ignore[attr-defined]  # bytes the stream has not handed on
        ):
            return None
        transport = writer.transport
        replies = cls(link, reader, transport.get_protocol())
        transport.set_protocol(replies)
        return replies

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        link = self._link
        while link.failed is None:
            reply = self._reader.gets()
            if reply is NOT_ENOUGH_DATA:
                return
            if isinstance(reply, ValkeyConnectionError):  # e.g. "max number of clients"
                link._fail(reply)
                return
            link._read_one(reply)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._fail(ValkeyConnectionError(f"Connection to {self._link._where()} lost"))
        # The stream's protocol learns it too, so closing the connection's stream completes.
        self._stream.connection_lost(exc)
