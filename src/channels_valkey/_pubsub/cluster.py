"""The pub/sub layer on a Valkey Cluster: sharded pub/sub, one subscriber per primary.

Names are those of standalone mode (``asgispecific.<hex>``, ``asgi__group__<group>``). Sharded
pub/sub routes each by its own hash slot, so no hash tag is needed: a subscription is one name.

- Publishing: ``SPUBLISH`` (and ``PUBSUB SHARDNUMSUB``) on the lane of the primary of the
  name's slot (``_common.cluster_lanes``: one multiplexed connection per primary, as in the core
  layer), which follows ``-MOVED`` and rides out a failover or a cluster that is down under
  the layer's retry policy (``_common.retry``), then raises
  :class:`~channels_valkey.exceptions.ServerUnreachable`.
- Subscribing: ``SSUBSCRIBE`` on a connection to the primary that serves the name's slot, one
  :class:`~channels_valkey._pubsub.subscriber.Subscriber` (one connection) per primary that
  holds subscribed names, made when first needed. Names of one ``SSUBSCRIBE`` share a slot.
- The slot map used for subscribing is this module's own :class:`SlotMap`, read with
  ``CLUSTER SLOTS`` when first needed and again when a name has to move, so that following
  subscriptions never waits on the publishing side's reloads.

Following the cluster (see ``_pubsub.relocation`` for the details):

- a slot moves (resharding): the old node pushes ``sunsubscribe`` for its names; the subscriber
  reads the slot map from that node (it knows the new owner) and hands the names over to the
  new owner's subscriber. A subscription that meets ``-MOVED`` is handed over to the node it
  names. Between the push and the new confirmation a message can be missed, so the local
  channels concerned get ``on_disconnect`` and then ``on_reconnect``, as for a dropped
  connection;
- a primary fails: its subscriber's connection drops (``on_disconnect``); before reconnecting
  it reads the slot map from the other nodes, and once a replica has been promoted the names
  move to it (``on_reconnect`` when all are confirmed there). A subscription a node refuses
  for now (``CLUSTERDOWN``, ``TRYAGAIN``) is sent again with backoff; Valkey 8.0 serves
  sharded pub/sub on healthy nodes even while the cluster is down, so this is a safeguard.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import MovedError, ResponseError

from channels_valkey._common.cluster_lanes import ClusterLanes, split_name
from channels_valkey._common.cluster_routing import Call, node_name, redirect_target
from channels_valkey._common.health import without_health_check
from channels_valkey._common.hosts import ClusterHost
from channels_valkey._common.retry import TRANSIENT_ERRORS, retrying
from channels_valkey._common.single_flight import SingleFlight
from channels_valkey.exceptions import ServerUnreachable

from .state import ChannelClosed
from .subscriber import Hooks, Subscriber

logger = logging.getLogger(__name__)

#: A node that cannot tell the slot map: unreachable, or refusing (loading, not a cluster...).
_REFRESH_ERRORS: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, ResponseError)


class SlotMap:
    """Which primary (``host:port``) serves each slot, as ranges of slots."""

    def __init__(self, ranges: list[tuple[int, int, str]] | None = None) -> None:
        self._ranges = sorted(ranges or [])
        self._starts = [start for start, _, _ in self._ranges]

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[tuple[int, int, str]]:
        return iter(self._ranges)

    @classmethod
    def from_reply(cls, reply: Any, asked: str) -> SlotMap:
        """Parse ``CLUSTER SLOTS``: ``[[start, end, [host, port, id, ...], replicas...]...]``.
        A primary announced without a host is on the node that answered (``asked``)."""
        ranges = []
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            if not host or host == "?":
                host = split_name(asked)[0]
            ranges.append((start, end, node_name(host, int(primary[1]))))
        return cls(ranges)

    def owner(self, slot: int) -> str | None:
        index = bisect.bisect_right(self._starts, slot) - 1
        if index >= 0:
            start, end, key = self._ranges[index]
            if start <= slot <= end:
                return key
        return None

    def moved(self, slot: int, key: str) -> SlotMap:
        """A copy in which ``slot`` is served by ``key`` (what a ``-MOVED`` teaches)."""
        ranges = []
        for start, end, owner in self._ranges:
            if start <= slot <= end:
                if start < slot:
                    ranges.append((start, slot - 1, owner))
                if slot < end:
                    ranges.append((slot + 1, end, owner))
            else:
                ranges.append((start, end, owner))
        ranges.append((slot, slot, key))
        return SlotMap(ranges)

    def primaries(self) -> list[str]:
        return list(dict.fromkeys(key for _, _, key in self._ranges))


class NodeEndpoint:
    """One cluster node, for a subscriber to connect to."""

    def __init__(self, key: str, lanes: ClusterLanes) -> None:
        self.key = key
        self._lanes = lanes

    def __repr__(self) -> str:
        return f"<NodeEndpoint {self.key}>"

    def describe(self) -> str:
        return self.key

    def subscriber_connection(self) -> AbstractConnection:
        return without_health_check(self._lanes.connection_to(self.key))


class ClusterPlacement:
    """A Valkey Cluster, as one event loop sees it: a lane per primary for ``SPUBLISH``, and
    one subscriber per primary holding subscribed names (keyed by ``host:port``)."""

    def __init__(self, host: ClusterHost, hooks: Hooks) -> None:
        self.host = host
        self.lanes = ClusterLanes.for_host(host)
        self._hooks = hooks
        self._slots = SlotMap()
        self._loads = SingleFlight(self._load_retrying)
        self._subscribers: dict[str, Subscriber] = {}
        #: The subscriber responsible for each subscribed name.
        self._holder: dict[str, Subscriber] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<ClusterPlacement {self.host.describe()} nodes={len(self._subscribers)}>"

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers.values())

    def describe(self, key: object) -> str:
        return f"cluster node {key}"

    # --- publishing ----------------------------------------------------------------------

    async def publish(self, name: str, payload: bytes) -> int:
        """``SPUBLISH`` on the primary of ``name``'s slot; returns how many connections to
        that node received it (subscribers on its replicas are not counted)."""
        return int(await self.lanes.command(name, "SPUBLISH", name, payload))

    async def subscribed(self, name: str) -> int:
        """``PUBSUB SHARDNUMSUB`` on the primary of ``name``'s slot: connections to that node
        subscribed to it (those on its replicas are not counted)."""
        _, count = await self.lanes.command(name, "PUBSUB", "SHARDNUMSUB", name)
        return int(count)

    async def publish_many(self, name: str, payloads: Sequence[bytes]) -> list[int]:
        """One ``SPUBLISH`` per payload, in one write to the primary of ``name``'s slot."""
        slot = self.lanes.slot(name)
        calls = [Call(slot, ("SPUBLISH", name, payload)) for payload in payloads]
        return [int(reply) for reply in await self.lanes.run_raising(calls)]

    # --- subscribing ---------------------------------------------------------------------

    async def subscribe(self, name: str) -> None:
        subscriber = self._holder.get(name)
        if subscriber is None:
            if not self._slots:
                await self._load()
            subscriber = self._holder.get(name)  # placed meanwhile by another caller
            if subscriber is None:
                owner = self.owner(name)
                if owner is None:
                    raise ServerUnreachable(
                        self.host.describe(), LookupError(f"no node serves slot {self.slot(name)}")
                    )
                subscriber = self._holder[name] = self._subscriber(owner)
        await subscriber.subscribe(name)

    def unsubscribe(self, name: str) -> None:
        subscriber = self._holder.pop(name, None)
        if subscriber is not None:
            subscriber.unsubscribe(name)

    def _subscriber(self, key: str) -> Subscriber:
        subscriber = self._subscribers.get(key)
        if subscriber is None:
            if self._closed:
                raise ChannelClosed("the channel layer was closed")
            subscriber = self._subscribers[key] = Subscriber(
                NodeEndpoint(key, self.lanes),
                self._hooks,
                key=key,
                cluster=self,
            )
        return subscriber

    async def _load(self) -> None:
        """The first slot map; concurrent first subscriptions share one read, tried again
        under the retry policy while no node answers (the cluster may be restarting)."""
        try:
            await self._loads()
        except ServerUnreachable:
            raise
        except Exception as error:
            raise ServerUnreachable(self.host.describe(), error) from error

    async def _load_retrying(self) -> None:
        await retrying(self.refresh, (*_REFRESH_ERRORS, LookupError), self.host.describe())

    # --- what subscribers' relocations ask (the relocation.Cluster protocol) ----------

    def slot(self, name: str) -> int:
        return self.lanes.slot(name)

    def owner(self, name: str) -> str | None:
        return self._slots.owner(self.slot(name))

    async def refresh(self, *, ask_first: str | None = None, ask_last: str | None = None) -> None:
        """Read ``CLUSTER SLOTS`` from the first node that answers: ``ask_first``, then the
        known primaries, then the startup nodes, then ``ask_last``."""
        candidates = [
            *([ask_first] if ask_first else []),
            *self._slots.primaries(),
            *(node_name(host, port) for host, port in self.host.startup_nodes),
        ]
        order = [key for key in dict.fromkeys(candidates) if key != ask_last]
        if ask_last:
            order.append(ask_last)
        error: Exception | None = None
        for key in order:
            try:
                reply = await self._cluster_slots(key)
            except _REFRESH_ERRORS as failed:
                error = failed
                continue
            slots = SlotMap.from_reply(reply, key)
            logger.debug("Read the slot map from %s: %d primaries", key, len(slots.primaries()))
            if slots:
                self._slots = slots
                return
        raise error or LookupError("no node of the cluster answered CLUSTER SLOTS")

    async def _cluster_slots(self, key: str) -> Any:
        connection = self.lanes.connection_to(key)
        try:
            await connection.send_packed_command(
                connection.pack_command("CLUSTER SLOTS"), check_health=False
            )
            return await connection.read_response()
        finally:
            await connection.disconnect()

    def learn(self, error: MovedError, where: str) -> str:
        key = redirect_target(error, where)
        self._slots = self._slots.moved(int(error.slot_id), key)
        return key

    def hand_off(self, name: str, future: asyncio.Future[None], to: str) -> asyncio.Future[None]:
        logger.debug("Subscribing %s on %s, which serves its slot now", name, to)
        subscriber = self._subscriber(to)
        self._holder[name] = subscriber
        return subscriber.adopt(name, future)

    # --- closing -------------------------------------------------------------------------

    def abandon(self) -> None:
        self._closed = True
        self._loads.abandon()
        for subscriber in self.subscribers:
            subscriber.abandon()
        self.lanes.abandon()

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(subscriber.aclose() for subscriber in self.subscribers))
        await self.lanes.aclose()
