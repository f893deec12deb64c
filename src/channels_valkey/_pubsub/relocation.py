"""Following a Valkey Cluster's slots, for the subscriber of one node.

With sharded pub/sub a subscribed name lives on the node that serves its slot, and that can
change while the subscriber's connection stays up:

- a slot moves (resharding): the node pushes ``sunsubscribe`` for the names of that slot
  (:meth:`Relocation.dropped`). The relocation reads the slot map from this node, which knows
  the new owner, and hands the names over to the new owner's subscriber;
- a subscription meets ``-MOVED``: the map is patched for that slot and the name handed over
  to the node named (:meth:`Relocation.refused`);
- a node refuses a subscription for now (``CLUSTERDOWN`` while failing over, ``TRYAGAIN`` or
  ``ASK`` while a slot migrates, or a ``-MOVED`` naming the node itself): it is sent again
  after a pause, with the backoff of ``_common.retry``;
- the connection drops: before reconnecting, the subscriber asks :meth:`Relocation.follow`
  to read the map from the other nodes first and hand over what lives elsewhere now, which is
  how it follows a failover to the promoted replica.

A name whose slot is still served here is subscribed here again. Handing over goes through the
:class:`Cluster` (``_pubsub.cluster.ClusterPlacement``), which keeps one subscriber per node.

Ownership: a :class:`Relocation` belongs to one subscriber, its :class:`Holder`, which made it
and ends it (:meth:`Relocation.close`; the holder cancels and awaits :attr:`Relocation.tasks`
with its own). The holder owns the subscriptions (the names it is responsible for and their
futures) and the connection; the relocation owns what is in motion between nodes:

- ``moving``: names the node dropped and not yet placed. The holder does not subscribe them on
  a new connection, and no outage of this subscriber is over while one remains;
- the one task that reads the slot map and places them;
- the confirmations, on other nodes, of names handed over during an outage: the outage is over
  only once they are all confirmed there too (:attr:`Relocation.settled`);
- the subscriptions refused for now, and the timer that sends them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from valkey.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from channels_valkey._common.log import RateLimitedLog
from channels_valkey._common.retry import pause

from .state import ChannelClosed
from .wire import SUBSCRIBE, Op

logger = logging.getLogger(__name__)

#: Refusals that a later attempt can turn into a confirmation: the cluster is failing over
#: (``CLUSTERDOWN``), or resharding (``TRYAGAIN``, ``ASK``). The subscription is sent again.
_RETRY_LATER = (ClusterDownError, TryAgainError, AskError)


def settle(future: asyncio.Future[None] | None) -> None:
    """Resolve ``future`` unless it is resolved already: its waiter needs it no more."""
    if future is not None and not future.done():
        future.set_result(None)


class Cluster(Protocol):
    """What a relocation asks of the cluster (``_pubsub.cluster.ClusterPlacement``)."""

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


class Holder(Protocol):
    """What a relocation asks of the subscriber it belongs to."""

    @property
    def session(self) -> object | None:
        """The current connection's session (compared by identity), ``None`` between two."""
        ...

    def wanted(self, name: str) -> asyncio.Future[None] | None:
        """The future of ``name``'s subscription while the holder is responsible for it."""
        ...

    def send(self, op: Op) -> None:
        """Queue ``op`` for the current connection."""
        ...

    def resubscribe(self, name: str) -> None:
        """Subscribe ``name`` again on the current connection (without one, the next one
        subscribes it)."""
        ...

    def release(self, name: str) -> asyncio.Future[None]:
        """Stop being responsible for ``name`` without unsubscribing; returns its future."""
        ...

    def report_moved(self, names: list[str]) -> None:
        """The node stopped serving ``names``: an outage for them until confirmed again."""
        ...

    def check_up(self) -> None:
        """Report the end of the outage if nothing of it is left."""
        ...

    def spawn(self, coroutine: Coroutine[Any, Any, None], role: str) -> asyncio.Task[None]:
        """Run ``coroutine`` as one of the holder's tasks (named after ``role``)."""
        ...


class Relocation:
    """Moves the names of one node's subscriber to where their slots live (see the module)."""

    def __init__(
        self, cluster: Cluster, holder: Holder, *, node: str, warnings: RateLimitedLog
    ) -> None:
        self._cluster = cluster
        self._holder = holder
        #: This node's name (``host:port``), as the cluster names owners.
        self._node = node
        self._warnings = warnings
        self._closed = False
        #: Names the node dropped, to be placed again once the slot map is read.
        self.moving: set[str] = set()
        self._unannounced: list[str] = []
        self._task: asyncio.Task[None] | None = None
        #: Confirmations, on other nodes, of names handed over during an outage.
        self._handoffs: set[asyncio.Future[None]] = set()
        #: Subscriptions refused for now, each with the session it was refused on.
        self._retry: list[tuple[object, Op]] = []
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_round = 0

    @property
    def settled(self) -> bool:
        """No name is waiting to be placed, nor to be confirmed on the node it went to."""
        return not self.moving and not self._handoffs

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [self._task] if self._task is not None else []

    def slot(self, name: str) -> int:
        return self._cluster.slot(name)

    def close(self) -> None:
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()

    def subscription_confirmed(self) -> None:
        """The node confirmed a subscription: the next refusal starts the backoff afresh."""
        self._retry_round = 0

    # --- names the node dropped ------------------------------------------------------------

    def dropped(self, name: str) -> None:
        """The node unsubscribed ``name`` itself: its slot now lives elsewhere."""
        if self._holder.wanted(name) is None or name in self.moving:
            return
        self.moving.add(name)
        if not self._unannounced:
            asyncio.get_running_loop().call_soon(self._announce)
        self._unannounced.append(name)
        if self._task is None:
            self._task = self._holder.spawn(self._relocate_moving(), "relocation")

    def _announce(self) -> None:
        """One outage for a burst of dropped names (one ``sunsubscribe`` frame each)."""
        names = [name for name in self._unannounced if name in self.moving]
        self._unannounced.clear()
        if names and not self._closed:
            logger.debug(
                "%s stopped serving %d subscribed name(s) (a slot moved or a failover); "
                "subscribing them where they live now",
                self._node,
                len(names),
            )
            self._holder.report_moved(names)

    async def _relocate_moving(self) -> None:
        failures = 0
        try:
            while self.moving and not self._closed:
                names = list(self.moving)
                try:
                    # This node just learned where the slot went: ask it first.
                    await self._cluster.refresh(ask_first=self._node)
                except Exception as error:
                    failures += 1
                    self._warnings.warning(
                        "Could not read the cluster's slot map (%s); retrying", error
                    )
                    await asyncio.sleep(pause(failures))
                    continue
                self._place(names, resubscribe_here=True)
        finally:
            self._task = None
        self._holder.check_up()

    async def follow(self, names: list[str]) -> None:
        """Before reconnecting: read the slot map, asking the other nodes first (this one may
        be dead), and hand over those of ``names`` whose slots live elsewhere now, as after a
        failover. Raises what reading the map raised."""
        await self._cluster.refresh(ask_last=self._node)
        self._place(names, resubscribe_here=False)

    def _place(self, names: Iterable[str], *, resubscribe_here: bool) -> None:
        """Hand each name whose slot lives on another node over to it; subscribe the others
        here again (at once, or at the next connection)."""
        for name in names:
            if self._holder.wanted(name) is None:
                self.moving.discard(name)
                continue
            owner = self._cluster.owner(name)
            if owner is not None and owner != self._node:
                self._move(name, owner)
                continue
            if name in self.moving:
                self.moving.discard(name)
                if resubscribe_here:
                    self._holder.resubscribe(name)

    def _move(self, name: str, to: str) -> None:
        self.moving.discard(name)
        future = self._holder.release(name)
        try:
            handed = self._cluster.hand_off(name, future, to)
        except ChannelClosed as error:  # the layer is closing on this loop
            if not future.done():
                future.set_exception(error)
            return
        if not handed.done():
            self._handoffs.add(handed)
            handed.add_done_callback(self._handoff_done)

    def _handoff_done(self, future: asyncio.Future[None]) -> None:
        self._handoffs.discard(future)
        self._holder.check_up()

    # --- refusals ----------------------------------------------------------------------------

    def refused(self, session: object, ops: list[Op], error: ResponseError) -> bool:
        """The node refused ``ops`` (sent on ``session``) with ``error``: follow a ``-MOVED``,
        or send them again later when the refusal is for now. ``False`` for any other error,
        which the holder reports to the ops' waiters."""
        if isinstance(error, MovedError):
            logger.debug("%s answered %s: following it", self._node, error)
            self._redirected(session, ops, self._cluster.learn(error, self._node))
            return True
        if isinstance(error, _RETRY_LATER):
            logger.debug("%s refused for now (%s); trying again", self._node, error)
            for op in ops:
                if op.kind == SUBSCRIBE:
                    self._retry_later(session, op)
                else:
                    settle(op.done)
            return True
        return False

    def _redirected(self, session: object, ops: list[Op], to: str) -> None:
        """A ``-MOVED``: the slot of these names lives on node ``to``; follow it there."""
        for op in ops:
            wanted = self._holder.wanted(op.name)
            if op.kind == SUBSCRIBE and wanted is not None:
                if op.name in self.moving:  # being placed already
                    if op.done is not wanted:
                        settle(op.done)
                    continue
                if to == self._node:  # a node naming itself: ask again later
                    self._retry_later(session, op)
                    continue
                self._move(op.name, to)
                if op.done is wanted:
                    continue  # the pending subscription went along with the name
            settle(op.done)

    def _retry_later(self, session: object, op: Op) -> None:
        self._retry.append((session, op))
        if self._retry_timer is None:
            self._retry_round += 1
            delay = pause(self._retry_round)
            self._retry_timer = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_timer = None
        retry, self._retry = self._retry, []
        for session, op in retry:
            wanted = self._holder.wanted(op.name)
            current = session is self._holder.session
            if current and wanted is not None and op.name not in self.moving:
                self._holder.send(op)
            elif op.done is not wanted:  # a re-subscription that is no longer needed
                settle(op.done)
