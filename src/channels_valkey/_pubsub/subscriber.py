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

On a Valkey Cluster (sharded pub/sub, with a :class:`Relocator`) a name can also leave this
node while the connection stays up: the node pushes ``sunsubscribe`` for the names of a slot
it no longer serves, or answers ``-MOVED`` to a subscription. The subscriber then asks the
relocator where the slot lives now and hands the name over to that node's subscriber (or
subscribes it here again). After a dropped connection it asks the same question before
reconnecting, which is how it follows a failover to the promoted replica.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from channels_valkey._common.log import RateLimitedLog
from channels_valkey._common.per_loop import quiet, release_dead
from channels_valkey._common.retry import DEADLINE, TRANSIENT_ERRORS, pause
from channels_valkey.exceptions import ServerUnreachable
from channels_valkey.stats import StatsRecorder

from .state import ChannelClosed
from .wire import (
    PING,
    PLAIN,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Answer,
    Command,
    Dialect,
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

#: Refusals that a later attempt can turn into a confirmation: the cluster is failing over
#: (``CLUSTERDOWN``), or resharding (``TRYAGAIN``, ``ASK``). The subscription is sent again.
_RETRY_LATER = (ClusterDownError, TryAgainError, AskError)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen: it was reported to the waiters, or logged when nobody waited."""
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class Target(Protocol):
    """Where a subscriber connects: a server, a Sentinel-managed primary or a cluster node."""

    def describe(self) -> str: ...

    def subscriber_connection(self) -> AbstractConnection:
        """A new, unconnected connection for one subscriber to own."""
        ...


class Relocator(Protocol):
    """What a subscriber on a cluster node asks of the cluster (``_pubsub.cluster``)."""

    def slot(self, name: str) -> int: ...

    def owner(self, name: str) -> str | None:
        """The node (``host:port``) serving ``name``'s slot in the last slot map read."""
        ...

    async def refresh(self, *, ask_first: str | None = None, ask_last: str | None = None) -> None:
        """Read the slot map again from a node of the cluster."""
        ...

    def learn(self, error: MovedError, where: str) -> str:
        """Note the new owner a ``-MOVED`` (answered by node ``where``) names; returns it."""
        ...

    def hand_off(self, name: str, future: asyncio.Future[None], to: str) -> asyncio.Future[None]:
        """Make node ``to`` responsible for ``name``; returns the future its confirmation
        resolves (``future`` itself when someone still waits on it)."""
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


class _Link:
    """One connection as long as it works: what was sent on it and whether it is caught up."""

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
    def __init__(
        self,
        server: Target,
        hooks: Hooks,
        *,
        key: object,
        dialect: Dialect = PLAIN,
        relocator: Relocator | None = None,
    ) -> None:
        self.server = server
        self.key = key
        self._hooks = hooks
        self._stats = hooks.stats
        self._dialect = dialect
        self._relocator = relocator
        self._slot_of = relocator.slot if relocator is not None and dialect.sharded else None
        self._wanted: dict[str, asyncio.Future[None]] = {}
        self._outbox: list[Op] = []
        self._link: _Link | None = None
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
        self._link_lost = False
        #: Names the server dropped, to be placed again once the slot map is read.
        self._moving: set[str] = set()
        self._unannounced: list[str] = []
        self._relocating: asyncio.Task[None] | None = None
        #: Confirmations, on other nodes, of names handed over during an outage.
        self._handoffs: set[asyncio.Future[None]] = set()
        #: Subscriptions refused for now (cluster failing over), sent again after a delay.
        self._retry: list[tuple[_Link, Op]] = []
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_round = 0

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<Subscriber {self.server.describe()} {state} names={len(self._wanted)}>"

    @property
    def up(self) -> bool:
        """Connected, with every wanted name answered by the server."""
        return self._link is not None and self._link.up

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
            raise ServerUnreachable(self.server.describe(), cause)
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
                current.add_done_callback(lambda _: _settle(future))
            return current
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
        self._wanted[name] = future
        self._has_wanted.set()
        self._send(Op(SUBSCRIBE, name, future))
        if not self._tasks:
            self._start()
        return future

    def unsubscribe(self, name: str) -> None:
        future = self._wanted.pop(name, None)
        if future is None:
            return
        self._moving.discard(name)
        _settle(future)  # whoever waited for it no longer needs it
        self._send(Op(UNSUBSCRIBE, name))
        self._check_empty()

    async def aclose(self) -> None:
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        # Also woken, in case a cancellation is swallowed inside valkey-py (its writes use
        # asyncio.wait_for, which can lose one before Python 3.12): the loops then see _closed.
        self._has_wanted.set()
        self._outbox_ready.set()
        tasks = [*self._tasks, *([self._relocating] if self._relocating else [])]
        pending = {task for task in tasks if not task.done()}
        while pending:  # cancelled again if a cancellation was lost
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        error = ChannelClosed("the channel layer was closed")
        for future in self._wanted.values():
            if not future.done():
                future.set_exception(error)
        self._wanted.clear()
        self._stats.closed(self)

    def abandon(self) -> None:
        """Release the connection and silence the tasks of an event loop that was closed
        under them (see ``_common.per_loop``)."""
        self._closed = True
        for task in [*self._tasks, *([self._relocating] if self._relocating else [])]:
            quiet(task)
        if self._link is not None:
            release_dead(self._link.connection)
        self._stats.closed(self)

    def _send(self, op: Op) -> None:
        """Queue ``op`` for the writer; without a connection, the next one re-subscribes."""
        if self._link is None:
            return
        self._outbox.append(op)
        self._outbox_ready.set()

    def _release(self, name: str) -> asyncio.Future[None]:
        """Stop being responsible for ``name`` without unsubscribing (the server dropped it)."""
        future = self._wanted.pop(name)
        self._moving.discard(name)
        if not self._wanted:
            self._has_wanted.clear()
        return future

    def _check_empty(self) -> None:
        if self._wanted:
            return
        self._has_wanted.clear()
        if self._link is None and self._link_lost:
            # Nothing left to reconnect for: the time without a connection stops counting.
            # The notices stay due (on_up) for the next time this subscriber is up.
            self._link_lost = False
            self._stats.closed(self)

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

    # --- outages -------------------------------------------------------------------------

    def _down(self, names: list[str], *, moved: bool) -> None:
        self._missed = True
        self._hooks.on_down(self.key, names, moved)

    def _maybe_up(self) -> None:
        """Report the end of the outage once every name it concerned is confirmed again."""
        if not self._missed or self._closed or self._moving or self._handoffs:
            return
        link = self._link
        if self._wanted and (link is None or not link.up or link.confirms):
            return
        self._missed = False
        if self._link_lost:
            self._link_lost = False
            self._stats.reconnected(self)
            if self._wanted:
                logger.info(
                    "Reconnected to %s; %d subscriptions restored",
                    self.server.describe(),
                    len(self._wanted),
                )
            else:
                logger.info(
                    "Subscriptions lost with %s restored on the nodes serving them now",
                    self.server.describe(),
                )
        self._hooks.on_up(self.key)

    def _track_handoff(self, future: asyncio.Future[None]) -> None:
        if future.done():
            return
        self._handoffs.add(future)
        future.add_done_callback(self._handoff_done)

    def _handoff_done(self, future: asyncio.Future[None]) -> None:
        self._handoffs.discard(future)
        self._maybe_up()

    def _confirmation(self, link: _Link) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        future.add_done_callback(partial(self._confirmed, link))
        link.confirms.add(future)
        return future

    def _confirmed(self, link: _Link, future: asyncio.Future[None]) -> None:
        link.confirms.discard(future)
        if link is self._link:
            self._maybe_up()

    # --- moving names (cluster) ----------------------------------------------------------

    def _move(self, name: str, to: str) -> None:
        assert self._relocator is not None
        future = self._release(name)
        try:
            handed = self._relocator.hand_off(name, future, to)
        except ChannelClosed as error:  # the layer is closing on this loop
            if not future.done():
                future.set_exception(error)
            return
        self._track_handoff(handed)

    def _dropped_by_server(self, name: str) -> None:
        """The node unsubscribed ``name`` itself: its slot now lives elsewhere."""
        if name not in self._wanted or name in self._moving:
            return
        self._moving.add(name)
        if not self._unannounced:
            asyncio.get_running_loop().call_soon(self._announce)
        self._unannounced.append(name)
        if self._relocating is None:
            self._relocating = asyncio.get_running_loop().create_task(
                self._relocate_moving(),
                name=f"channels_valkey pubsub relocation {self.server.describe()}",
            )
            self._relocating.add_done_callback(self._task_done)

    def _announce(self) -> None:
        """One on_down for a burst of dropped names (one ``sunsubscribe`` frame each)."""
        names = [name for name in self._unannounced if name in self._moving]
        self._unannounced.clear()
        if names and not self._closed:
            logger.debug(
                "%s stopped serving %d subscribed name(s) (a slot moved or a failover); "
                "subscribing them where they live now",
                self.server.describe(),
                len(names),
            )
            self._down(names, moved=True)

    async def _relocate_moving(self) -> None:
        assert self._relocator is not None
        failures = 0
        try:
            while self._moving and not self._closed:
                names = list(self._moving)
                try:
                    # This node just learned where the slot went: ask it first.
                    await self._relocator.refresh(ask_first=str(self.key))
                except Exception as error:
                    failures += 1
                    self._warnings.warning(
                        "Could not read the cluster's slot map (%s); retrying", error
                    )
                    await asyncio.sleep(pause(failures))
                    continue
                self._place(names, resubscribe_here=True)
        finally:
            self._relocating = None
        self._maybe_up()

    def _place(self, names: Iterable[str], *, resubscribe_here: bool) -> None:
        """Hand each name whose slot lives on another node over to it; subscribe the others
        here again (at once, or at the next connection)."""
        assert self._relocator is not None
        link = self._link
        for name in names:
            if name not in self._wanted:
                self._moving.discard(name)
                continue
            owner = self._relocator.owner(name)
            if owner is not None and owner != self.key:
                self._move(name, owner)
                continue
            if name in self._moving:
                self._moving.discard(name)
                if resubscribe_here and link is not None:
                    future = self._wanted[name]
                    done = self._confirmation(link) if future.done() else future
                    self._send(Op(SUBSCRIBE, name, done))

    # --- reader --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._closed:
            await self._has_wanted.wait()
            if self._failures:
                await asyncio.sleep(self._backoff())
                if self._relocator is not None and not await self._follow_cluster():
                    continue
            try:
                link = await self._connect()
            except Exception as error:
                self._failed(error)
                continue
            try:
                await self._serve(link)
            except GeneratorExit:
                raise  # its loop was closed under it: abandon() releases the connection
            except Exception as error:
                self._failed(error)
                await self._drop(link, notify=True)
            except BaseException:
                await self._drop(link, notify=False)
                raise

    async def _follow_cluster(self) -> bool:
        """Before reconnecting to a cluster node: read the slot map (asking the other nodes
        first, this one may be dead) and hand over the names whose slots live elsewhere now,
        as after a failover. ``False`` when there is nothing to connect for."""
        assert self._relocator is not None
        try:
            await self._relocator.refresh(ask_last=str(self.key))
        except Exception as error:
            self._failed(error)
            return False
        self._place(list(self._wanted), resubscribe_here=False)
        if self._wanted:
            return True
        self._failures = 0
        self._maybe_up()
        return False

    def _backoff(self) -> float:
        return pause(self._failures)

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
        names = [name for name in self._wanted if name not in self._moving]
        if self._slot_of is not None:
            names.sort(key=self._slot_of)  # one SSUBSCRIBE per slot
        ops = []
        for name in names:
            future = self._wanted[name]
            ops.append(Op(SUBSCRIBE, name, self._confirmation(link) if future.done() else future))
        # Replaces whatever was queued for the previous connection: this covers it all.
        self._outbox = [*ops, Op(PING, done=caught_up)]
        self._link = link
        self._outbox_ready.set()
        return link

    def _caught_up(self, link: _Link, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None or link is not self._link:
            return
        link.up = True
        self._failures = 0
        self._last_error = None
        self._maybe_up()

    async def _serve(self, link: _Link) -> None:
        """Read until the connection fails (then raise): pushed messages and answers."""
        connection = link.connection
        while True:
            try:
                reply = await connection.read_response(
                    timeout=KEEPALIVE_SECONDS, disconnect_on_error=False, push_request=True
                )
            except ResponseError as error:
                slot = error.slot_id if isinstance(error, AskError) else None
                if slot is not None and not link.tracker.expects_error(slot):
                    continue  # answers an unsubscribe that the server's push already settled
                self._refused(link, link.tracker.refused(error), error)
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
                self._hooks.on_message(parsed.name, parsed.payload)
            elif isinstance(parsed, Answer):
                if (
                    self._dialect.sharded
                    and parsed.kind == UNSUBSCRIBE
                    and not link.tracker.expects(parsed)
                ):
                    self._dropped_by_server(parsed.name)
                    continue
                link.tracker.answered(parsed)
                if parsed.kind == SUBSCRIBE:
                    link.subscribed = True
                    self._retry_round = 0

    def _refused(self, link: _Link, ops: list[Op], error: ResponseError) -> None:
        if isinstance(error, MovedError) and self._relocator is not None:
            logger.debug("%s answered %s: following it", self.server.describe(), error)
            self._redirected(ops, self._relocator.learn(error, str(self.key)))
        elif isinstance(error, _RETRY_LATER) and self._dialect.sharded:
            logger.debug("%s refused for now (%s); trying again", self.server.describe(), error)
            for op in ops:
                if op.kind == SUBSCRIBE:
                    self._retry_later(link, op)
                else:
                    _settle(op.done)
        else:
            for op in ops:
                if op.done is not None and not op.done.done():
                    op.done.set_exception(error)
                self._refused_for_good(op, error)

    def _redirected(self, ops: list[Op], to: str) -> None:
        """A ``-MOVED``: the slot of these names lives on node ``to``; follow it there."""
        for op in ops:
            wanted = self._wanted.get(op.name)
            if op.kind == SUBSCRIBE and wanted is not None:
                if op.name in self._moving:  # being placed already
                    if op.done is not wanted:
                        _settle(op.done)
                    continue
                if to == self.key:  # a node naming itself: ask again later
                    self._retry_later(self._link, op)
                    continue
                self._move(op.name, to)
                if op.done is wanted:
                    continue  # the pending subscription went along with the name
            _settle(op.done)

    def _retry_later(self, link: _Link | None, op: Op) -> None:
        if link is None:
            _settle(op.done if op.done is not self._wanted.get(op.name) else None)
            return
        self._retry.append((link, op))
        if self._retry_timer is None:
            self._retry_round += 1
            delay = pause(self._retry_round)
            self._retry_timer = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_timer = None
        retry, self._retry = self._retry, []
        for link, op in retry:
            wanted = self._wanted.get(op.name)
            if link is self._link and wanted is not None and op.name not in self._moving:
                self._send(op)
            elif op.done is not wanted:  # a re-subscription that is no longer needed
                _settle(op.done)

    def _refused_for_good(self, op: Op, error: ResponseError) -> None:
        logger.error("%s refused %s %s: %s", self.server.describe(), op.kind, op.name, error)
        if op.kind == SUBSCRIBE and self._wanted.get(op.name) is op.done:
            del self._wanted[op.name]  # a later subscribe() asks the server again
            self._check_empty()

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
            if not self._link_lost:
                self._link_lost = True
                self._stats.disconnected(self)
            self._down(list(self._wanted), moved=False)
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
            await self._write(link, batch(ops, self._slot_of))

    async def _write(self, link: _Link, commands: list[Command]) -> None:
        # Checked with no await before the write: a dropped connection is never reopened
        # here (valkey-py would reconnect it); the reader owns reconnecting.
        if link is not self._link or not link.connection.is_connected:
            return
        connection = link.connection
        for command in commands:
            link.tracker.sent(command)
        packed = connection.pack_commands(
            [(self._dialect.command(command.kind), *command.args) for command in commands]
        )
        try:
            await connection.send_packed_command(packed, check_health=False)
        except TRANSIENT_ERRORS as error:
            logger.debug("Write to %s failed: %s", self.server.describe(), error)
            # the reader sees the failure too, reconnects and re-subscribes
