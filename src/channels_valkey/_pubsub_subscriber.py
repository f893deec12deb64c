"""One shard's subscriptions on one event loop: a connection of its own and two tasks.

- The *reader* task owns the connection. It connects, then waits on the socket: every pushed
  message is delivered the moment it arrives, with no polling. When the connection fails
  (server restart, ``CLIENT KILL``, network) it reports the drop, reconnects with backoff and
  re-subscribes every wanted name; a ``PING`` written after the re-subscription marks the
  moment all of it is confirmed, which is when the return is reported.
- The *writer* task is the only one that writes, in order, so the commands in flight always
  match :class:`~channels_valkey._pubsub_wire.ReplyTracker`. A burst of new channels becomes
  one ``SUBSCRIBE`` with many names, and a cancelled caller can never leave a command
  half-written on the connection.

Liveness: when the connection has been silent for ``KEEPALIVE_SECONDS`` the reader sends a
``PING``; no answer within as long again counts as a dropped connection. An idle layer thus
wakes once per ``KEEPALIVE_SECONDS`` per shard, and never otherwise.

Invariant: ``_wanted`` holds every name this event loop needs; after a reconnect the server
holds exactly those. ``subscribe()`` returns once the server has confirmed the name (or raises
:class:`ServerUnreachable` after ``SUBSCRIBE_TIMEOUT`` seconds without a confirmation).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from functools import partial

from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import ResponseError

from ._client import TRANSIENT_ERRORS
from ._log import RateLimitedLog
from ._pubsub_server import PubSubServer
from ._pubsub_state import ChannelClosed
from ._pubsub_wire import (
    PING,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Answer,
    Command,
    Op,
    Pushed,
    ReplyTracker,
    batch,
    parse_reply,
)
from .exceptions import ServerUnreachable

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30.0
SUBSCRIBE_TIMEOUT = 10.0
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen: it was reported to the waiters, or logged when nobody waited."""
    if not future.cancelled():
        future.exception()


class _Link:
    """One connection as long as it works: what was sent on it and whether it is caught up."""

    __slots__ = ("connection", "pinged", "subscribed", "tracker", "up")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.tracker = ReplyTracker()
        #: The server confirmed a subscription on this connection: losing it can lose messages.
        self.subscribed = False
        #: Every wanted name is confirmed on this connection.
        self.up = False
        #: A keepalive PING is unanswered.
        self.pinged = False


class Subscriber:
    def __init__(
        self,
        server: PubSubServer,
        *,
        on_message: Callable[[str, bytes], None],
        on_down: Callable[[list[str]], None],
        on_up: Callable[[], None],
    ) -> None:
        self.server = server
        self._on_message = on_message
        self._on_down = on_down
        self._on_up = on_up
        self._wanted: dict[str, asyncio.Future[None]] = {}
        self._outbox: list[Op] = []
        self._link: _Link | None = None
        self._has_wanted = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failures = 0
        #: A drop was reported with on_down; its on_up is due once caught up again.
        self._missed = False
        self._last_error: BaseException | None = None
        self._warnings = RateLimitedLog(logger, interval=10.0)
        self._closed = False

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<Subscriber {self.server.describe()} {state} names={len(self._wanted)}>"

    @property
    def up(self) -> bool:
        """Connected, with every wanted name confirmed by the server."""
        return self._link is not None and self._link.up

    @property
    def names(self) -> list[str]:
        return list(self._wanted)

    async def subscribe(self, name: str) -> None:
        """Return once the server has confirmed ``name``; at once if it already had."""
        future = self._wanted.get(name)
        if future is None:
            future = self._want(name)
        if future.done():
            future.result()
            return
        # asyncio.wait, not wait_for: it leaves the shared future alone when this caller is
        # cancelled, and never swallows that cancellation (wait_for can, before Python 3.12).
        done, _ = await asyncio.wait({future}, timeout=SUBSCRIBE_TIMEOUT)
        if not done:
            cause = self._last_error or TimeoutError(
                f"SUBSCRIBE {name} not confirmed within {SUBSCRIBE_TIMEOUT:g} s"
            )
            raise ServerUnreachable(self.server.describe(), cause)
        future.result()

    def unsubscribe(self, name: str) -> None:
        future = self._wanted.pop(name, None)
        if future is None:
            return
        if not future.done():
            future.set_result(None)  # whoever waited for it no longer needs it
        if not self._wanted:
            self._has_wanted.clear()
        self._send(Op(UNSUBSCRIBE, name))

    async def aclose(self) -> None:
        self._closed = True
        # Also woken, in case a cancellation is swallowed inside valkey-py (its writes use
        # asyncio.wait_for, which can lose one before Python 3.12): the loops then see _closed.
        self._has_wanted.set()
        self._outbox_ready.set()
        pending = {task for task in self._tasks if not task.done()}
        while pending:  # cancelled again if a cancellation was lost
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        error = ChannelClosed("the channel layer was closed")
        for future in self._wanted.values():
            if not future.done():
                future.set_exception(error)
        self._wanted.clear()

    def _want(self, name: str) -> asyncio.Future[None]:
        if self._closed:
            raise ChannelClosed("the channel layer was closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._wanted[name] = future
        self._has_wanted.set()
        self._send(Op(SUBSCRIBE, name, future))
        if not self._tasks:
            self._start()
        return future

    def _send(self, op: Op) -> None:
        """Queue ``op`` for the writer; without a connection, the next one re-subscribes."""
        if self._link is None:
            return
        self._outbox.append(op)
        self._outbox_ready.set()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        where = self.server.describe()
        self._tasks = [
            loop.create_task(self._read_loop(), name=f"channels_valkey pubsub reader {where}"),
            loop.create_task(self._write_loop(), name=f"channels_valkey pubsub writer {where}"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "Pub/sub task %s for %s stopped: %r",
                task.get_name(),
                self.server.describe(),
                task.exception(),
            )

    # --- reader --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._closed:
            await self._has_wanted.wait()
            if self._failures:
                await asyncio.sleep(self._backoff())
            try:
                link = await self._connect()
            except Exception as error:
                self._failed(error)
                continue
            try:
                await self._serve(link)
            except Exception as error:
                self._failed(error)
                await self._drop(link, notify=True)
            except BaseException:
                await self._drop(link, notify=False)
                raise

    def _backoff(self) -> float:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (self._failures - 1))
        return delay * random.uniform(0.5, 1.0)

    async def _connect(self) -> _Link:
        connection = self.server.subscriber_connection()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await connection.disconnect()
            raise
        link = _Link(connection)
        caught_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        caught_up.add_done_callback(partial(self._caught_up, link))
        # Replaces whatever was queued for the previous connection: this covers it all.
        self._outbox = [Op(SUBSCRIBE, name, future) for name, future in self._wanted.items()]
        self._outbox.append(Op(PING, done=caught_up))
        self._link = link
        self._outbox_ready.set()
        return link

    def _caught_up(self, link: _Link, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None or link is not self._link:
            return
        link.up = True
        self._failures = 0
        self._last_error = None
        if self._missed:
            self._missed = False
            logger.info(
                "Reconnected to %s; %d subscriptions restored",
                self.server.describe(),
                len(self._wanted),
            )
            self._on_up()

    async def _serve(self, link: _Link) -> None:
        """Read until the connection fails (then raise): pushed messages and answers."""
        connection = link.connection
        while True:
            try:
                reply = await connection.read_response(
                    timeout=KEEPALIVE_SECONDS, disconnect_on_error=False, push_request=True
                )
            except ResponseError as error:
                for op in link.tracker.refused(error):
                    self._refused(op, error)
                continue
            if reply is None:  # silent for KEEPALIVE_SECONDS
                if link.pinged:
                    raise TimeoutError(f"no answer to PING within {KEEPALIVE_SECONDS:g} s")
                link.pinged = True
                self._send(Op(PING))
                continue
            link.pinged = False
            parsed = parse_reply(reply)
            if isinstance(parsed, Pushed):
                self._on_message(parsed.name, parsed.payload)
            elif isinstance(parsed, Answer):
                link.tracker.answered(parsed)
                link.subscribed = link.subscribed or parsed.kind == SUBSCRIBE

    def _refused(self, op: Op, error: ResponseError) -> None:
        logger.error("%s refused %s %s: %s", self.server.describe(), op.kind, op.name, error)
        if op.kind == SUBSCRIBE and self._wanted.get(op.name) is op.done:
            del self._wanted[op.name]  # a later subscribe() asks the server again
            if not self._wanted:
                self._has_wanted.clear()

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        self._last_error = error
        if isinstance(error, TRANSIENT_ERRORS):
            self._warnings.warning(
                "Pub/sub connection to %s failed (%s); reconnecting",
                self.server.describe(),
                error,
            )
        else:
            logger.error(
                "Pub/sub connection to %s failed; reconnecting",
                self.server.describe(),
                exc_info=error,
            )

    async def _drop(self, link: _Link, *, notify: bool) -> None:
        if self._link is link:
            self._link = None
            self._outbox.clear()
        if notify and link.subscribed and self._wanted:
            self._missed = True
            self._on_down(list(self._wanted))
        await link.connection.disconnect()

    # --- writer --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while not self._closed:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            link = self._link
            if link is None or not self._outbox or self._closed:
                continue
            ops, self._outbox = self._outbox, []
            await self._write(link, batch(ops))

    async def _write(self, link: _Link, commands: list[Command]) -> None:
        for command in commands:
            # Checked with no await before the write: a dropped connection is never reopened
            # here (valkey-py would reconnect it); the reader owns reconnecting.
            if link is not self._link or not link.connection.is_connected:
                return
            link.tracker.sent(command)
            try:
                await link.connection.send_command(command.kind, *command.args, check_health=False)
            except TRANSIENT_ERRORS as error:
                logger.debug("Write to %s failed: %s", self.server.describe(), error)
                return  # the reader sees the failure too, reconnects and re-subscribes
