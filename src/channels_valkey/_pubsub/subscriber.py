"""The subscriptions of one event loop on one server (or one cluster node): a connection of its
own and two tasks.

- The *reader* task owns the connection. It connects, then waits on the socket: every pushed
  message is delivered the moment it arrives, with no polling. When the connection fails
  (server restart, ``CLIENT KILL``, network) it reports the drop, reconnects with backoff and
  re-subscribes every wanted name; once the server has confirmed all of them again the return
  is reported.
- The *writer* task is the only one that writes, in order, so the commands in flight always
  match :class:`~channels_valkey._pubsub.wire.ReplyTracker`. A burst of new channels becomes
  one write (one ``SUBSCRIBE`` with many names, or on a cluster one ``SSUBSCRIBE`` per slot),
  and a cancelled caller can never leave a command half-written on the connection.

Liveness: when the connection has been silent for ``KEEPALIVE_SECONDS`` the reader sends a
``PING``; no answer within as long again counts as a dropped connection. An idle layer thus
wakes once per ``KEEPALIVE_SECONDS`` per connection, and never otherwise.

On a Valkey Cluster (sharded pub/sub) a name can also leave this node while the connection
stays up, and a dropped connection may mean that a replica took over. Following the slots is
the job of the subscriber's :class:`~channels_valkey._pubsub.relocation.Relocation`: the
reader passes it what the node says about slots (a pushed ``sunsubscribe``, a ``-MOVED``, a
refusal for now), and asks it where the names live before reconnecting.

*Outages*, reported with ``on_down(names)`` / ``on_up()``: an outage opens when a connection
that carried subscriptions drops, or when the server drops names (a slot moved); it closes once
every name this subscriber held then is confirmed again, here or on the node it moved to. A
drop during an open outage does not open another one, so each local channel hears of each
outage once (the caller dedupes per subscriber).

Invariant: ``_wanted`` holds every name this subscriber is responsible for; after a reconnect
the server holds exactly those (minus the ones being relocated). ``subscribe()`` returns once
the server has confirmed the name, wherever it ended up (or raises
:class:`ServerUnreachable` after ``SUBSCRIBE_TIMEOUT`` seconds without a confirmation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import AskError, ResponseError

from channels_valkey._common.log import RateLimitedLog
from channels_valkey._common.per_loop import quiet, release_dead
from channels_valkey._common.retry import DEADLINE, TRANSIENT_ERRORS, pause
from channels_valkey.exceptions import ServerUnreachable
from channels_valkey.stats import StatsRecorder

from .relocation import Cluster, Relocation, settle
from .state import ChannelClosed
from .wire import (
    PING,
    PLAIN,
    SHARDED,
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

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30.0
#: The retry policy's deadline: a subscription not confirmed by then raises.
SUBSCRIBE_TIMEOUT = DEADLINE


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen: it was reported to the waiters, or logged when nobody waited."""
    if not future.cancelled():
        future.exception()


class Endpoint(Protocol):
    """Where a subscriber connects: a server, a Sentinel-managed primary or a cluster node."""

    def describe(self) -> str: ...

    def subscriber_connection(self) -> AbstractConnection:
        """A new, unconnected connection for one subscriber to own."""
        ...


@dataclass(frozen=True)
class Hooks:
    """What a subscriber reports to its event loop's layer."""

    on_message: Callable[[str, bytes], None]
    #: ``(subscriber key, names that may miss messages, the cause was a moved slot)``.
    on_down: Callable[[object, list[str], bool], None]
    #: ``(subscriber key)``: every name of the outage is confirmed again.
    on_up: Callable[[object], None]
    stats: StatsRecorder


class _Session:
    """One connection, from its connect to its drop: what was sent on it and whether it has
    caught up. A new connection gets a new session, so anything tied to an old one (an
    answer, a confirmation, a retry) is recognised as stale by identity."""

    __slots__ = ("confirms", "connection", "pinged", "subscribed", "tracker", "up")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.tracker = ReplyTracker()
        #: The server confirmed a subscription on this connection: losing it can lose messages.
        self.subscribed = False
        #: Every name wanted when it connected has been answered.
        self.up = False
        #: A keepalive PING is unanswered.
        self.pinged = False
        #: Re-subscriptions of names confirmed before (on an earlier connection, or before the
        #: server dropped them), not answered yet: the outage lasts until they are.
        self.confirms: set[asyncio.Future[None]] = set()


class Subscriber:
    """One connection carrying the subscriptions of one event loop to one server or node.

    Owned by its placement (``_pubsub.placement``, ``_pubsub.cluster``), which made it and
    ends it with :meth:`aclose` (or :meth:`abandon` when the event loop was closed under it).
    It owns the connection, its reader and writer tasks, its subscriptions (``_wanted``: each
    name's future, resolved by the server's confirmation) and, on a cluster node, its
    :class:`~channels_valkey._pubsub.relocation.Relocation`. The tasks start with the first
    subscription and run until it is closed; with no name wanted they wait, unconnected.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        hooks: Hooks,
        *,
        key: object,
        cluster: Cluster | None = None,
    ) -> None:
        """``cluster``: the node ``key`` (``host:port``) of that cluster, with sharded pub/sub
        and a relocation; without it, classic pub/sub on a server that keeps every name."""
        self.endpoint = endpoint
        self.key = key
        self._hooks = hooks
        self._wanted: dict[str, asyncio.Future[None]] = {}
        self._outbox: list[Op] = []
        self._session: _Session | None = None
        self._has_wanted = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failures = 0
        self._last_error: BaseException | None = None
        self._warnings = RateLimitedLog(logger, interval=10.0)
        self._closed = False
        #: An outage was reported with on_down; its on_up is due once it is over.
        self._missed = False
        #: The outage began with a lost connection (counted in the stats when it ends).
        self._connection_lost = False
        self._relocation = (
            None
            if cluster is None
            else Relocation(cluster, self, node=str(key), warnings=self._warnings)
        )
        self._dialect = PLAIN if self._relocation is None else SHARDED
        self._slot_of = None if self._relocation is None else self._relocation.slot

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<Subscriber {self.endpoint.describe()} {state} names={len(self._wanted)}>"

    @property
    def up(self) -> bool:
        """Connected, with every wanted name answered by the server."""
        return self._session is not None and self._session.up

    @property
    def names(self) -> list[str]:
        return list(self._wanted)

    async def subscribe(self, name: str) -> None:
        """Return once the server has confirmed ``name``; at once if it already had."""
        future = self._wanted.get(name)
        if future is None:
            future = self.adopt(name, None)
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
            raise ServerUnreachable(self.endpoint.describe(), cause)
        future.result()

    def adopt(self, name: str, future: asyncio.Future[None] | None) -> asyncio.Future[None]:
        """Become responsible for ``name`` and subscribe it; returns the future the server's
        confirmation resolves. ``future`` (a subscription started on another node) is kept
        when it is still pending: whoever waits on it is answered from here."""
        if self._closed:
            raise ChannelClosed("the channel layer was closed")
        current = self._wanted.get(name)
        if current is not None:
            if future is not None and future is not current and not future.done():
                current.add_done_callback(lambda _: settle(future))
            return current
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
        self._wanted[name] = future
        self._has_wanted.set()
        self.send(Op(SUBSCRIBE, name, future))
        if not self._tasks:
            self._start()
        return future

    def unsubscribe(self, name: str) -> None:
        future = self._wanted.pop(name, None)
        if future is None:
            return
        if self._relocation is not None:
            self._relocation.moving.discard(name)
        settle(future)  # whoever waited for it no longer needs it
        self.send(Op(UNSUBSCRIBE, name))
        self._check_empty()

    async def aclose(self) -> None:
        self._closed = True
        if self._relocation is not None:
            self._relocation.close()
        # Also woken, in case a cancellation is swallowed inside valkey-py (its writes use
        # asyncio.wait_for, which can lose one before Python 3.12): the loops then see _closed.
        self._has_wanted.set()
        self._outbox_ready.set()
        pending = {task for task in self._all_tasks() if not task.done()}
        while pending:  # cancelled again if a cancellation was lost
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        error = ChannelClosed("the channel layer was closed")
        for future in self._wanted.values():
            if not future.done():
                future.set_exception(error)
        self._wanted.clear()
        self._hooks.stats.closed(self)

    def abandon(self) -> None:
        """Release the connection and silence the tasks of an event loop that was closed
        under them (see ``_common.per_loop``)."""
        self._closed = True
        if self._relocation is not None:
            self._relocation.close()
        for task in self._all_tasks():
            quiet(task)
        if self._session is not None:
            release_dead(self._session.connection)
        self._hooks.stats.closed(self)

    def _all_tasks(self) -> list[asyncio.Task[None]]:
        relocating = self._relocation.tasks if self._relocation is not None else []
        return [*self._tasks, *relocating]

    # --- what the relocation asks (the Holder protocol) ----------------------------------

    @property
    def session(self) -> _Session | None:
        return self._session

    def wanted(self, name: str) -> asyncio.Future[None] | None:
        return self._wanted.get(name)

    def send(self, op: Op) -> None:
        """Queue ``op`` for the writer; without a connection, the next one re-subscribes."""
        if self._session is None:
            return
        self._outbox.append(op)
        self._outbox_ready.set()

    def resubscribe(self, name: str) -> None:
        if self._session is not None:
            self.send(self._resubscription(self._session, name))

    def release(self, name: str) -> asyncio.Future[None]:
        """Stop being responsible for ``name`` without unsubscribing (the server dropped it)."""
        future = self._wanted.pop(name)
        if not self._wanted:
            self._has_wanted.clear()
        return future

    def report_moved(self, names: list[str]) -> None:
        self._down(names, moved=True)

    def spawn(self, coroutine: Coroutine[Any, Any, None], role: str) -> asyncio.Task[None]:
        where = self.endpoint.describe()
        task = asyncio.get_running_loop().create_task(
            coroutine, name=f"channels_valkey pubsub {role} {where}"
        )
        task.add_done_callback(self._task_done)
        return task

    # --- subscriptions -------------------------------------------------------------------

    def _resubscription(self, session: _Session, name: str) -> Op:
        """``SUBSCRIBE name`` again: for a name confirmed before, with a confirmation the
        outage waits for; otherwise with its pending future."""
        future = self._wanted[name]
        return Op(SUBSCRIBE, name, self._confirmation(session) if future.done() else future)

    def _check_empty(self) -> None:
        if self._wanted:
            return
        self._has_wanted.clear()
        if self._session is None and self._connection_lost:
            # Nothing left to reconnect for: the time without a connection stops counting.
            # The notices stay due (on_up) for the next time this subscriber is up.
            self._connection_lost = False
            self._hooks.stats.closed(self)

    def _start(self) -> None:
        self._tasks = [
            self.spawn(self._read_loop(), "reader"),
            self.spawn(self._write_loop(), "writer"),
        ]

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "Pub/sub task %s for %s stopped: %r",
                task.get_name(),
                self.endpoint.describe(),
                task.exception(),
            )

    # --- outages -------------------------------------------------------------------------

    def _down(self, names: list[str], *, moved: bool) -> None:
        self._missed = True
        self._hooks.on_down(self.key, names, moved)

    def check_up(self) -> None:
        """Report the end of the outage once every name it concerned is confirmed again."""
        if not self._missed or self._closed:
            return
        if self._relocation is not None and not self._relocation.settled:
            return
        session = self._session
        if self._wanted and (session is None or not session.up or session.confirms):
            return
        self._missed = False
        if self._connection_lost:
            self._connection_lost = False
            self._hooks.stats.reconnected(self)
            if self._wanted:
                logger.info(
                    "Reconnected to %s; %d subscriptions restored",
                    self.endpoint.describe(),
                    len(self._wanted),
                )
            else:
                logger.info(
                    "Subscriptions lost with %s restored on the nodes serving them now",
                    self.endpoint.describe(),
                )
        self._hooks.on_up(self.key)

    def _confirmation(self, session: _Session) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        future.add_done_callback(partial(self._confirmed, session))
        session.confirms.add(future)
        return future

    def _confirmed(self, session: _Session, future: asyncio.Future[None]) -> None:
        session.confirms.discard(future)
        if session is self._session:
            self.check_up()

    # --- reader --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._closed:
            await self._has_wanted.wait()
            if self._failures:
                await asyncio.sleep(pause(self._failures))
                if self._relocation is not None and not await self._follow_cluster():
                    continue
            try:
                session = await self._connect()
            except Exception as error:
                self._failed(error)
                continue
            try:
                await self._serve(session)
            except GeneratorExit:
                raise  # its loop was closed under it: abandon() releases the connection
            except Exception as error:
                self._failed(error)
                await self._drop(session, notify=True)
            except BaseException:
                await self._drop(session, notify=False)
                raise

    async def _follow_cluster(self) -> bool:
        """Before reconnecting to a cluster node: let the relocation hand over the names whose
        slots live elsewhere now. ``False`` when there is nothing to connect for."""
        assert self._relocation is not None
        try:
            await self._relocation.follow(list(self._wanted))
        except Exception as error:
            self._failed(error)
            return False
        if self._wanted:
            return True
        self._failures = 0
        self.check_up()
        return False

    async def _connect(self) -> _Session:
        connection = self.endpoint.subscriber_connection()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await connection.disconnect()
            raise
        session = _Session(connection)
        caught_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        caught_up.add_done_callback(partial(self._caught_up, session))
        moving = self._relocation.moving if self._relocation is not None else set()
        names = [name for name in self._wanted if name not in moving]
        if self._slot_of is not None:
            names.sort(key=self._slot_of)  # one SSUBSCRIBE per slot
        ops = [self._resubscription(session, name) for name in names]
        # Replaces whatever was queued for the previous connection: this covers it all.
        self._outbox = [*ops, Op(PING, done=caught_up)]
        self._session = session
        self._outbox_ready.set()
        return session

    def _caught_up(self, session: _Session, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None or session is not self._session:
            return
        session.up = True
        self._failures = 0
        self._last_error = None
        self.check_up()

    async def _serve(self, session: _Session) -> None:
        """Read until the connection fails (then raise): pushed messages and answers."""
        connection = session.connection
        tracker = session.tracker
        while True:
            try:
                reply = await connection.read_response(
                    timeout=KEEPALIVE_SECONDS, disconnect_on_error=False, push_request=True
                )
            except ResponseError as error:
                slot = error.slot_id if isinstance(error, AskError) else None
                if slot is not None and not tracker.expects_error(slot):
                    continue  # answers an unsubscribe that the server's push already settled
                self._refused(session, tracker.refused(error), error)
                continue
            if reply is None:  # silent for KEEPALIVE_SECONDS
                if session.pinged:
                    raise TimeoutError(f"no answer to PING within {KEEPALIVE_SECONDS:g} s")
                session.pinged = True
                self.send(Op(PING))
                continue
            session.pinged = False
            parsed = parse_reply(reply)
            if isinstance(parsed, Pushed):
                self._hooks.on_message(parsed.name, parsed.payload)
            elif isinstance(parsed, Answer):
                self._answered(session, parsed)

    def _answered(self, session: _Session, answer: Answer) -> None:
        relocation = self._relocation
        pushed = answer.kind == UNSUBSCRIBE and not session.tracker.expects(answer)
        if relocation is not None and pushed:  # the node no longer serves the name
            relocation.dropped(answer.name)
            return
        session.tracker.answered(answer)
        if answer.kind == SUBSCRIBE:
            session.subscribed = True
            if relocation is not None:
                relocation.subscription_confirmed()

    def _refused(self, session: _Session, ops: list[Op], error: ResponseError) -> None:
        if self._relocation is not None and self._relocation.refused(session, ops, error):
            return
        for op in ops:
            if op.done is not None and not op.done.done():
                op.done.set_exception(error)
            self._refused_for_good(op, error)

    def _refused_for_good(self, op: Op, error: ResponseError) -> None:
        logger.error("%s refused %s %s: %s", self.endpoint.describe(), op.kind, op.name, error)
        if op.kind == SUBSCRIBE and self._wanted.get(op.name) is op.done:
            del self._wanted[op.name]  # a later subscribe() asks the server again
            self._check_empty()

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        self._last_error = error
        if isinstance(error, TRANSIENT_ERRORS):
            self._warnings.warning(
                "Pub/sub connection to %s failed (%s); reconnecting",
                self.endpoint.describe(),
                error,
            )
        else:
            logger.error(
                "Pub/sub connection to %s failed; reconnecting",
                self.endpoint.describe(),
                exc_info=error,
            )

    async def _drop(self, session: _Session, *, notify: bool) -> None:
        if self._session is session:
            self._session = None
            self._outbox.clear()
        if notify and session.subscribed and self._wanted:
            if not self._connection_lost:
                self._connection_lost = True
                self._hooks.stats.disconnected(self)
            self._down(list(self._wanted), moved=False)
        await session.connection.disconnect()

    # --- writer --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while not self._closed:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            session = self._session
            if session is None or not self._outbox or self._closed:
                continue
            ops, self._outbox = self._outbox, []
            await self._write(session, batch(ops, self._slot_of))

    async def _write(self, session: _Session, commands: list[Command]) -> None:
        # Checked with no await before the write: a dropped connection is never reopened
        # here (valkey-py would reconnect it); the reader owns reconnecting.
        if session is not self._session or not session.connection.is_connected:
            return
        connection = session.connection
        for command in commands:
            session.tracker.sent(command)
        packed = connection.pack_commands(
            [(self._dialect.command(command.kind), *command.args) for command in commands]
        )
        try:
            await connection.send_packed_command(packed, check_health=False)
        except TRANSIENT_ERRORS as error:
            logger.debug("Write to %s failed: %s", self.endpoint.describe(), error)
            # the reader sees the failure too, reconnects and re-subscribes
