"""``ValkeyPubSubChannelLayer``: channels and groups over Valkey PUB/SUB.

A message is published and pushed by the server to every subscribed process at once: one
server hop, no queue on the server, no polling. The price is that nothing waits: a message is
delivered at most once, only to processes subscribed at the moment it is published, and lost
for a process while its connection to the server is down (the layer reconnects, re-subscribes
and can tell consumers with ``on_disconnect`` / ``on_reconnect`` messages).

Channel and group names on the wire are those of ``channels_redis`` 4.x
``RedisPubSubChannelLayer``: a ``send()`` publishes on the channel name as given, a group is
the pub/sub channel ``prefix + "__group__" + group``, and the payload is the serializer's
output with no random prefix. Processes running either package share one server.

Semantics of a normal channel (one that ``new_channel()`` did not make): every process
receiving on it gets a copy of each message; within one process, the coroutines receiving on
it share one queue, so each message goes to exactly one of them.

Costs (client round trips): ``send``/``group_send`` 1 ``PUBLISH``; ``send_multiple``/
``group_send_multiple`` 1, one ``PUBLISH`` per message written together; ``new_channel`` and the
first ``group_add`` of a group in a process 1 ``SUBSCRIBE`` (batched with others made at the
same time); ``receive`` none; freeing a channel 1 ``UNSUBSCRIBE``, not awaited;
``group_size`` 1 ``PUBSUB NUMSUB`` (``SHARDNUMSUB`` on a cluster).

On a Valkey Cluster (a ``{"cluster": True, ...}`` entry in ``hosts``) the layer uses sharded
pub/sub with the same names: ``SPUBLISH`` to the primary serving the name's slot,
``SSUBSCRIBE`` on one connection per primary holding subscribed names, following slot moves
and failovers (see ``_pubsub.cluster``). Costs are the same, except that names subscribed at
the same time go in one ``SSUBSCRIBE`` per slot (written together), and the first
subscription on a loop reads the slot map once (``CLUSTER SLOTS``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

from channels.layers import BaseChannelLayer

from ._common.background import background, warm
from ._common.connections import check_server
from ._common.log import RateLimitedLog
from ._common.messages import check_message, check_messages, check_size
from ._common.per_loop import PerLoop
from ._pubsub.config import PubSubConfig, build_pubsub_config
from ._pubsub.loop_layer import LoopLayer
from ._pubsub.state import (
    DEFAULT_CHANNEL_BYTES,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TOTAL_BYTES,
    Drops,
)
from .serializers import registry
from .stats import LayerStats, StatsRecorder

__all__ = ["ValkeyPubSubChannelLayer"]

logger = logging.getLogger(__name__)


class ValkeyPubSubChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """Channel layer over Valkey PUB/SUB (a drop-in for ``RedisPubSubChannelLayer``).

    Options: ``hosts`` (servers and Sentinel entries, or one Valkey Cluster entry), ``prefix``,
    ``symmetric_encryption_keys`` and ``serializer_format`` as for the core layer;
    ``on_disconnect`` and ``on_reconnect``, message types delivered to the local channels that
    may have missed messages while a server connection was down (or, on a cluster, while their
    names moved to another node), e.g. ``on_disconnect="valkey.disconnect"`` runs a consumer's
    ``valkey_disconnect`` handler.

    How much waits in a local channel's queue for its consumer (see ``_pubsub.state``): any
    number of messages while the consumer reads, up to ``channel_buffer_bytes`` beyond
    ``capacity`` messages for one channel and ``total_buffer_bytes`` for all local channels of
    the process (of one event loop) together; only ``capacity`` messages once the consumer has
    taken none for ``stall_timeout`` seconds while messages waited. What is dropped is counted
    in :meth:`stats` and logged. A bad option raises
    :class:`~channels_valkey.exceptions.ConfigurationError` here.
    """

    extensions = ["groups", "flush"]

    def __init__(
        self,
        hosts: Sequence[Any] | None = None,
        prefix: str = "asgi",
        capacity: int = 100,
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        serializer_format: str = "msgpack",
        on_disconnect: str | None = None,
        on_reconnect: str | None = None,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        channel_buffer_bytes: int = DEFAULT_CHANNEL_BYTES,
        total_buffer_bytes: int = DEFAULT_TOTAL_BYTES,
        max_message_size: int | None = None,
        **options: object,
    ) -> None:
        self.config: PubSubConfig = build_pubsub_config(
            hosts=hosts,
            prefix=prefix,
            capacity=capacity,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
            unknown=options,
            stall_timeout=stall_timeout,
            channel_buffer_bytes=channel_buffer_bytes,
            total_buffer_bytes=total_buffer_bytes,
            max_message_size=max_message_size,
        )
        for host in self.config.hosts:
            check_server(host)
        # No random prefix and no expiry: the bytes channels_redis' pub/sub layer publishes.
        self._serializer = registry.get_serializer(
            serializer_format,
            symmetric_encryption_keys=symmetric_encryption_keys,
            random_prefix_length=0,
            expiry=None,
        )
        self._stats = StatsRecorder()
        self._undecodable = RateLimitedLog(logger)
        drops = Drops(self._stats, self.config.overflow)
        self._loops = PerLoop(partial(LoopLayer, self.config, self._stats, drops))

    @property
    def prefix(self) -> str:
        return self.config.prefix

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def ring_size(self) -> int:
        return len(self.config.hosts)

    @property
    def dropped_messages(self) -> int:
        """Messages dropped so far by this process for its local channels' consumers (the
        same number as ``stats().dropped_from_buffers``)."""
        return self._stats.dropped_from_buffers

    def stats(self) -> LayerStats:
        """A snapshot of this layer's counters (see :mod:`channels_valkey.stats`), counted in
        process memory with no round trip, over every event loop the layer ran on.

        - ``messages_sent``: ``send()`` calls that published;
        - ``messages_received``: messages handed to ``receive()``; the layer's own
          ``on_disconnect``/``on_reconnect`` notices are not counted;
        - ``dropped_from_buffers``: messages (and notices) dropped by this process for a local
          channel: its consumer stopped reading (took nothing for ``stall_timeout`` seconds)
          with ``capacity`` messages waiting, or it fell ``channel_buffer_bytes`` behind, or
          the process's channels together held ``total_buffer_bytes`` beyond capacity;
        - ``group_sends``: ``group_send()`` calls that published;
        - ``group_deliveries``: the receivers the server reported for those publishes
          (``PUBLISH``/``SPUBLISH`` return how many subscribed connections got the message):
          one per subscribed *process* (event loop), not per member channel. On a cluster,
          only connections to the primary that served the slot are counted;
        - ``reconnects`` and ``seconds_disconnected``: outages of subscribed connections, from
          the drop until every subscription is confirmed again (on a cluster possibly on
          another node, after a failover). A slot that moves while its node stays connected is
          not a disconnection, though its channels get the notices;
        - ``channel_full``, ``expired`` and ``group_members_full`` stay 0: a publish is never
          refused for a full channel, nothing expires, and the publisher does not learn about
          receivers' full queues (each receiving process counts those in its own
          ``dropped_from_buffers``).
        """
        return self._stats.snapshot()

    def get_capacity(self, channel: str) -> int:
        return self.config.capacity

    def __repr__(self) -> str:
        hosts = ", ".join(host.describe() for host in self.config.hosts)
        return f"<ValkeyPubSubChannelLayer prefix={self.prefix!r} hosts=[{hosts}]>"

    # --- the channel layer API -------------------------------------------------------------

    @warm
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Publish ``message`` to the processes receiving on ``channel`` now (at most once)."""
        self.require_valid_channel_name(channel)
        payload = self._serialize(check_message(message), f"channel {channel!r}")
        await self._loops.current().publish(channel, payload)
        self._stats.messages_sent += 1

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``, subscribing to it first if needed.

        Cancelling the last ``receive()`` waiting on a channel means its consumer went away
        (Channels cancels it when a websocket closes): the channel is unsubscribed, leaves its
        groups and its queued messages are freed. So do not wrap ``receive()`` in a timeout on
        a channel you mean to keep.
        """
        self.require_valid_channel_name(channel)
        loop_layer = self._loops.current()
        while True:
            item = await loop_layer.receive(channel)
            if isinstance(item, dict):
                return item  # a notice made by the layer
            message = self._decode(channel, item)
            if message is not None:
                self._stats.messages_received += 1
                return message

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new channel ``<prefix of the layer><prefix><hex>``, subscribed when returned."""
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        self.require_valid_channel_name(channel)
        await self._loops.current().open(channel)
        return channel

    # --- groups extension ------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add a channel this process receives on to ``group``; returns once subscribed."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        loop_layer = self._loops.current()
        if not loop_layer.owns(channel):
            raise RuntimeError(
                f"group_add({group!r}, {channel!r}): channel {channel!r} has no consumer in "
                "this process (on this event loop). With pub/sub, a process can only add "
                "its own channels to a group; call it with the consumer's own channel name: "
                f"await self.channel_layer.group_add({group!r}, self.channel_name)"
            )
        await loop_layer.group_add(self.config.group_channel(group), channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it was not in it."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        loop_layer = self._loops.existing()
        if loop_layer is not None:
            loop_layer.group_discard(self.config.group_channel(group), channel)

    @warm
    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish ``message`` once; every process with members delivers it to them."""
        self.require_valid_group_name(group)
        payload = self._serialize(check_message(message), f"group {group!r}")
        receivers = await self._loops.current().publish(self.config.group_channel(group), payload)
        self._stats.group_sends += 1
        self._stats.group_deliveries += receivers

    async def group_size(self, group: str) -> int:
        """How many channels are in ``group``, as far as pub/sub can tell: this process's
        channels in it (on this event loop), counted exactly, plus one for every other
        connection subscribed to the group's pub/sub name (a process, or another event loop
        of this one, with at least one channel in it; a process running channels_redis
        counts the same way). A lower bound: another process with several channels in the
        group counts once. One round trip (``PUBSUB NUMSUB``; ``PUBSUB SHARDNUMSUB`` on a
        cluster)."""
        self.require_valid_group_name(group)
        return await self._loops.current().group_size(self.config.group_channel(group))

    # --- bulk sends ------------------------------------------------------------------------

    @warm
    async def send_multiple(self, channel: str, messages: Sequence[dict[str, Any]]) -> None:
        """Publish ``messages`` on ``channel`` in order, in one round trip (one ``PUBLISH``
        each, written together). An empty list does nothing."""
        self.require_valid_channel_name(channel)
        target = f"channel {channel!r}"
        payloads = [self._serialize(message, target) for message in check_messages(messages)]
        if not payloads:
            return
        await self._loops.current().publish_many(channel, payloads)
        self._stats.messages_sent += len(payloads)

    @warm
    async def group_send_multiple(self, group: str, messages: Sequence[dict[str, Any]]) -> None:
        """Publish ``messages`` to ``group`` in order, in one round trip; every process with
        members delivers them in that order. An empty list does nothing."""
        self.require_valid_group_name(group)
        target = f"group {group!r}"
        payloads = [self._serialize(message, target) for message in check_messages(messages)]
        if not payloads:
            return
        receivers = await self._loops.current().publish_many(
            self.config.group_channel(group), payloads
        )
        self._stats.group_sends += len(payloads)
        self._stats.group_deliveries += sum(receivers)

    def _holds_running_loop(self) -> bool:
        """Whether this layer holds connections or consumers on the running loop (see
        ``_common.background.warm``)."""
        return self._loops.existing() is not None

    # --- flush extension and closing -------------------------------------------------------

    async def flush(self) -> None:
        """Forget this event loop's channels and groups and close its connections.

        Nothing is stored on the server, so there is nothing to delete there. A ``receive()``
        still waiting raises; the layer reopens connections on its next use.
        """
        await self._loops.close_current()

    async def close_pools(self) -> None:
        """Same as :meth:`close` (the name the core layer and channels_redis use)."""
        await self._loops.close_current()

    async def close(self) -> None:
        """Unsubscribe and close this event loop's connections, and those the layer's sends
        from short-lived loops use on the background loop (``_common.background.warm``); safe to
        call several times.

        Not required: a loop's connections also close when ``asyncio.run()`` or
        ``async_to_sync`` finishes the loop.
        """
        await self._loops.close_current()
        await background.close_there(self._loops.close_current)

    # --- internals -------------------------------------------------------------------------

    def _serialize(self, message: dict[str, Any], target: str) -> bytes:
        """The message's bytes, checked against ``max_message_size`` before any I/O."""
        payload = self._serializer.serialize(message)
        return check_size(payload, self.config.max_message_size, target)

    def _decode(self, channel: str, payload: bytes) -> dict[str, Any] | None:
        try:
            message = self._serializer.deserialize(payload)
        except Exception as error:
            self._undecodable.warning(
                "Dropped a message on %s that could not be decoded (%s): is every process "
                "using the same serializer_format and symmetric_encryption_keys?",
                channel,
                type(error).__name__,
            )
            return None
        if not isinstance(message, dict):
            self._undecodable.warning("Dropped a message on %s: not a dict", channel)
            return None
        return message
