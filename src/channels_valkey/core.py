"""``ValkeyChannelLayer``: channels and groups kept in Valkey.

A message waits in Valkey until a consumer takes it, so delivery survives a consumer that is
slow or restarting, up to ``expiry`` seconds. The key layout and payload format are those of
``channels_redis`` 4.x, so processes running either package share one server (see ``_queue.keys``).

Costs per operation (client round trips): ``send`` 1; ``receive`` at most 1, fewer when a
burst arrives (one ``BZMPOP`` pops up to ``capacity`` messages for this process's channels);
``group_send`` 1 to read the group plus 1 per shard holding members, sent concurrently,
whatever the group's size; ``group_size`` 1; ``group_add``/``group_discard`` 1. The bulk forms
cost the same whatever the number of messages: ``send_multiple`` 1, ``group_send_multiple`` as
``group_send`` (on a cluster, 1 per slot holding members, pipelined per node).

Liveness (``process_expiry``, see ``_queue.liveness``): a layer receiving on its process-local
channels heartbeats with one script call every ``process_expiry / 4`` seconds; channels of processes
that stopped heartbeating leave groups at the next ``group_send`` or ``group_size`` of each
group, which then also reads the registry again to confirm them, and sends one ``ZREM`` and
one ``UNLINK`` per server holding dead queues.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from ._common.background import background, warm
from ._common.connections import check_server
from ._common.hosts import Host, on_cluster
from ._common.log import RateLimitedLog
from ._common.messages import RESERVED_KEY, check_message, check_messages, check_size
from ._common.per_loop import PerLoop
from ._common.sharding import shard_index
from ._queue.config import DEFAULT_PROCESS_EXPIRY, LayerConfig, build_config
from ._queue.keys import KeySpace, is_process_local, non_local_name
from ._queue.liveness import Liveness
from ._queue.loop_resources import LoopResources
from ._queue.mailbox import Mailbox, Message
from ._queue.plan import QueueWrite, batch_scores, plan_group_send
from ._queue.reader import Popped, QueueReader
from ._queue.shard import QueueServer, ReplicaWait
from .exceptions import ServerUnreachable
from .serializers import registry
from .stats import LayerStats, StatsRecorder

logger = logging.getLogger(__name__)

#: Seconds a blocking pop waits before it checks whether anyone still wants its queue.
BLOCK_SECONDS = 5


class ValkeyChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """Channel layer storing queues and groups in Valkey (a drop-in for ``RedisChannelLayer``).

    Options keep the names and defaults of ``channels_redis`` 4.x; they are checked here and
    a bad one raises :class:`~channels_valkey.exceptions.ConfigurationError`.
    """

    extensions = ["groups", "flush"]

    def __init__(
        self,
        hosts: Sequence[Any] | None = None,
        prefix: str = "asgi",
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: dict[Any, int] | None = None,
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
        wait_for_replicas: int = 0,
        replica_timeout: float = 1.0,
        process_expiry: float | None = DEFAULT_PROCESS_EXPIRY,
        max_message_size: int | None = None,
    ) -> None:
        self.config: LayerConfig = build_config(
            hosts=hosts,
            prefix=prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            random_prefix_length=random_prefix_length,
            wait_for_replicas=wait_for_replicas,
            replica_timeout=replica_timeout,
            process_expiry=process_expiry,
            max_message_size=max_message_size,
        )
        for host in self.config.hosts:
            check_server(host)
        self._serializer = registry.get_serializer(
            serializer_format,
            symmetric_encryption_keys=symmetric_encryption_keys,
            random_prefix_length=self.config.random_prefix_length,
            expiry=self.config.expiry,
        )
        self._keys = KeySpace(self.config.prefix, hash_tags=on_cluster(self.config.hosts))
        self._replica_wait = (
            ReplicaWait(self.config.wait_for_replicas, self.config.replica_timeout)
            if self.config.wait_for_replicas
            else None
        )
        #: Names this layer's process-local channels: ``<prefix>.<client_prefix>!<suffix>``.
        self.client_prefix = uuid.uuid4().hex
        self._init_receiving()

    def _init_receiving(self) -> None:
        """What receiving needs: the mailbox, the per-loop resources, liveness."""
        self._stats = StatsRecorder()
        self._mailbox = Mailbox(
            self.config.capacity_of, self.config.expiry, self._stats, on_room=self._poke_readers
        )
        self._normal_shards = itertools.cycle(range(self.ring_size))
        self._loops = PerLoop(
            partial(LoopResources, self.config.hosts), on_dead_loop=self._forget_loop
        )
        self._undecodable_log = RateLimitedLog(logger)
        self._removal_log = RateLimitedLog(logger)
        #: (shard index, wake key) of pops that loops closed without cleanup left behind.
        self._dead_pops: list[tuple[int, str]] = []
        #: Loops closed without cleanup whose receive() calls the mailbox still lists.
        self._dead_loops: list[asyncio.AbstractEventLoop] = []
        # receive() serves one event loop at a time: the mailbox's futures belong to it.
        self._receive_loop: asyncio.AbstractEventLoop | None = None
        self._receiving = 0
        self._liveness = (
            None
            if self.config.process_expiry is None
            else Liveness(
                self.client_prefix,
                self._keys.alive(),
                self.config.process_expiry,
                self.config.group_expiry,
            )
        )
        #: The per-loop resources running the heartbeat: those of the loop that last received
        #: on a process-local channel (a weak reference: the loop's end must free them).
        self._heartbeat_owner: weakref.ref[LoopResources] | None = None

    # Read-only views of the options, under the names channels_redis exposes.
    @property
    def prefix(self) -> str:
        return self.config.prefix

    @property
    def expiry(self) -> int:
        return self.config.expiry

    @property
    def group_expiry(self) -> int:
        return self.config.group_expiry

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.config.hosts

    @property
    def channel_capacity(self) -> list[tuple[re.Pattern[str], int]]:
        """The compiled ``channel_capacity`` rules, first match first."""
        return list(self.config.channel_capacity)

    @property
    def process_expiry(self) -> float | None:
        return self.config.process_expiry

    @property
    def ring_size(self) -> int:
        return len(self.config.hosts)

    def stats(self) -> LayerStats:
        """A snapshot of this layer's counters (see :mod:`channels_valkey.stats`)."""
        return self._stats.snapshot()

    def get_capacity(self, channel: str) -> int:
        return self.config.capacity_of(channel)

    def __repr__(self) -> str:
        hosts = ", ".join(host.describe() for host in self.config.hosts)
        return f"<ValkeyChannelLayer prefix={self.prefix!r} hosts=[{hosts}]>"

    # --- the channel layer API -------------------------------------------------------------

    @warm
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue ``message`` on ``channel``; raises ``ChannelFull`` at capacity."""
        self.require_valid_channel_name(channel)
        check_message(message)
        if is_process_local(channel):
            message = {**message, RESERVED_KEY: channel}
        name = non_local_name(channel)
        payload = self._serialize(message, f"channel {channel!r}")
        shard = (await self._resources()).shards[self._send_shard(channel)]
        queued = await shard.send(
            self._keys.queue(name),
            time.time(),
            self.expiry,
            self.get_capacity(channel),
            payload,
            self._replica_wait,
        )
        if not queued:
            self._stats.channel_full += 1
            raise ChannelFull(channel)
        self._stats.messages_sent += 1

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``.

        Several coroutines may receive on one channel; each message goes to one of them.
        Cancelling a ``receive()`` never loses or duplicates a message.
        """
        self.require_valid_channel_name(channel)
        if is_process_local(channel):
            self._check_owned(channel)
        resources = await self._resources()
        loop = asyncio.get_running_loop()
        self._enter_receive(loop)
        while self._dead_loops:
            self._mailbox.forget_loop(self._dead_loops.pop())
        if is_process_local(channel):
            self._keep_alive(resources)
        try:
            message = self._mailbox.take(channel)
            if message is not None:
                self._stats.messages_received += 1
                return message
            queue = self._keys.queue(channel)
            future = self._mailbox.wait(channel, queue)
            try:
                self._start_readers(resources, channel, queue)
                _, message = await future
            except GeneratorExit:
                raise  # its loop was closed under it: _forget_loop() took care of the future
            except BaseException:
                self._mailbox.done_waiting(channel, queue, future, returned=False)
                raise
            self._mailbox.done_waiting(channel, queue, future, returned=True)
            self._stats.messages_received += 1
            return message
        finally:
            self._leave_receive(loop)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name that this layer can receive on."""
        channel = f"{prefix}.{self.client_prefix}!{uuid.uuid4().hex}"
        self.require_valid_channel_name(channel)
        return channel

    # --- groups extension ------------------------------------------------------------------

    @warm
    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await (await self._group_shard(group)).group_add(
            self._keys.group(group), channel, self.group_expiry
        )

    @warm
    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await (await self._group_shard(group)).group_discard(self._keys.group(group), channel)

    @warm
    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member; members at capacity are skipped and counted."""
        self.require_valid_group_name(group)
        check_message(message)
        # Serialized before any I/O, so a bad or oversized message fails the same way
        # whatever the group; one payload serves every normal channel.
        shared = self._serialize(message, f"group {group!r}")

        def write(shard: QueueServer, writes: list[QueueWrite], now: float) -> Awaitable[list[int]]:
            deliveries = [
                (w.queue, w.capacity, self._payload_for(w, message, shared)) for w in writes
            ]
            return shard.send_many(deliveries, now, self.expiry)

        full, members = await self._send_to_members(group, write)
        self._stats.group_sends += 1
        self._stats.group_deliveries += members - full
        self._stats.group_members_full += full
        if full:
            logger.info("%d of %d channels in group %s were full", full, members, group)

    async def group_size(self, group: str) -> int:
        """How many channels are in ``group`` now: members whose membership has not expired
        (``group_expiry``), less those of processes taken for dead (see ``process_expiry``).
        Channels of processes that do not heartbeat (channels_redis, older releases) count
        until they leave or expire. One round trip; more when dead members are removed."""
        self.require_valid_group_name(group)
        resources = await self._resources()
        now = time.time()
        self._watch(resources)
        if self._liveness is None or not self._liveness.has_dead:
            # Nobody is known dead: the server counts, without sending the names.
            shard = resources.shards[shard_index(group, self.ring_size)]
            return await shard.group_count(self._keys.group(group), now - self.group_expiry)
        members, dead = await self._live_members(resources, group, now)
        await self._forget_dead(resources, group, dead)
        return len(members)

    # --- bulk sends ------------------------------------------------------------------------

    @warm
    async def send_multiple(self, channel: str, messages: Sequence[dict[str, Any]]) -> None:
        """Queue ``messages`` on ``channel`` in order, all or none, in one round trip.

        Raises ``ChannelFull`` and queues none of them when the channel has no room for all.
        The messages of one call stay together on one shard, even with several ``hosts``
        (where a normal channel's single sends take the shards in turn), so they are received
        in the order given. With ``wait_for_replicas`` it waits for the replicas as ``send``
        does, in the same round trip. An empty list does nothing.
        """
        self.require_valid_channel_name(channel)
        checked = check_messages(messages)
        if is_process_local(channel):
            checked = [{**message, RESERVED_KEY: channel} for message in checked]
        target = f"channel {channel!r}"
        payloads = [self._serialize(message, target) for message in checked]
        if not payloads:
            return
        shard = (await self._resources()).shards[self._send_shard(channel)]
        now = time.time()
        write = (self._keys.queue(non_local_name(channel)), self.get_capacity(channel), None)
        scores = batch_scores(now, len(payloads))
        skipped = await shard.send_batch(
            [write], scores, payloads, now, self.expiry, self._replica_wait
        )
        if skipped:
            self._stats.channel_full += len(payloads)
            raise ChannelFull(channel)
        self._stats.messages_sent += len(payloads)

    @warm
    async def group_send_multiple(self, group: str, messages: Sequence[dict[str, Any]]) -> None:
        """Send every member all of ``messages``, in order; a member without room for all of
        them gets none and is counted (as ``group_send`` skips a full member).

        One group read, then one round trip per shard holding members, as ``group_send``,
        whatever the number of messages. An empty list does nothing.
        """
        self.require_valid_group_name(group)
        checked = check_messages(messages)
        target = f"group {group!r}"
        shared = [self._serialize(message, target) for message in checked]
        if not shared:
            return

        def write(shard: QueueServer, writes: list[QueueWrite], now: float) -> Awaitable[list[int]]:
            batch = [(w.queue, w.capacity, self._payloads_for(w, checked)) for w in writes]
            return shard.send_batch(batch, batch_scores(now, len(shared)), shared, now, self.expiry)

        full, members = await self._send_to_members(group, write)
        count = len(shared)
        self._stats.group_sends += count
        self._stats.group_deliveries += (members - full) * count
        self._stats.group_members_full += full * count
        if full:
            logger.info(
                "%d of %d channels in group %s had no room for %d messages",
                full,
                members,
                group,
                count,
            )

    async def _send_to_members(
        self,
        group: str,
        write: Callable[[QueueServer, list[QueueWrite], float], Awaitable[list[int]]],
    ) -> tuple[int, int]:
        """What ``group_send`` and ``group_send_multiple`` share once the messages are
        serialized: read the live members (one round trip), ``write`` to each shard holding
        some (one round trip each, concurrently), and take dead processes' members out of the
        group alongside. Returns how many members were skipped as full, and how many there
        were."""
        resources = await self._resources()
        now = time.time()
        members, dead = await self._live_members(resources, group, now)
        plan = plan_group_send(members, self._keys, self.ring_size, self.get_capacity)
        sends = [write(resources.shards[index], writes, now) for index, writes in plan.items()]
        if len(sends) == 1 and not dead:
            results = [await sends[0]]  # the common case, without a task per send
        else:
            results, _ = await asyncio.gather(
                asyncio.gather(*sends), self._forget_dead(resources, group, dead)
            )
        full = 0
        for writes, skipped in zip(plan.values(), results, strict=True):
            full += sum(len(writes[i].local_channels) or 1 for i in skipped)
        return full, len(members)

    def _holds_running_loop(self) -> bool:
        """Whether this layer holds connections or consumers on the running loop (see
        ``_common.background.warm``)."""
        return self._loops.existing() is not None

    # --- flush extension and closing -------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key under this layer's prefix on every shard (``SCAN``, not ``KEYS``)."""
        shards = (await self._resources()).shards
        await asyncio.gather(*(shard.delete_matching(self._keys.pattern()) for shard in shards))
        self._mailbox.clear()

    async def close_pools(self) -> None:
        """Close this event loop's connections and readers; the layer reopens them on use.

        Not required: a loop's connections also close when ``asyncio.run()`` or
        ``async_to_sync`` finishes the loop.
        """
        await self._loops.close_current()

    async def close(self) -> None:
        """Close this event loop's connections and readers, and those the layer's sends from
        short-lived loops use on the background loop (``_common.background.warm``); safe to call
        several times."""
        await self.close_pools()
        await background.close_there(self._loops.close_current)

    # --- internals -------------------------------------------------------------------------

    async def _resources(self) -> LoopResources:
        """This loop's connections and readers; first, blocking pops left on the servers by
        loops closed under them are ended, so they cannot take a message sent from now on."""
        resources = self._loops.current()
        while self._dead_pops:
            index, wake_key = self._dead_pops.pop()
            try:
                await resources.shards[index].wake(wake_key, 1)
            except ServerUnreachable as error:  # its connection is closed anyway
                logger.debug("Could not wake a pop of a closed loop on %s: %s", wake_key, error)
        return resources

    async def _group_shard(self, group: str) -> QueueServer:
        return (await self._resources()).shards[shard_index(group, self.ring_size)]

    def _send_shard(self, channel: str) -> int:
        """A process-local channel's queue lives on the shard its name hashes to. Messages for
        a normal channel are spread over the shards in turn, as channels_redis does: its
        receivers wait on one shard at a time, so a channel kept on one shard could starve
        them. Our receivers read every shard; order is kept within a shard."""
        if is_process_local(channel):
            return shard_index(non_local_name(channel), self.ring_size)
        return next(self._normal_shards)

    async def _live_members(
        self, resources: LoopResources, group: str, now: float
    ) -> tuple[list[str], list[str]]:
        """The group's unexpired members, split into (live, dead), in one round trip."""
        self._watch(resources)
        shard = resources.shards[shard_index(group, self.ring_size)]
        members = await shard.group_members(self._keys.group(group), now - self.group_expiry)
        dead = [] if self._liveness is None else self._liveness.dead_among(members)
        if not dead:
            return members, []
        gone = set(dead)
        return [member for member in members if member not in gone], dead

    async def _forget_dead(self, resources: LoopResources, group: str, dead: list[str]) -> None:
        """Remove channels of dead processes from ``group`` and delete their queues (what
        waits there will never be read), concurrently. The view is read again first (one
        round trip), so that a process that has just come back is not removed on the word of
        a view up to an interval old: removing is for good, leaving out of one send is not.
        Tidying only: the caller already leaves them out, so a failure is logged, not raised,
        and the next call tries again."""
        liveness = self._liveness
        if not dead or liveness is None:
            return
        if not await liveness.refresh(resources.shards[self._registry_shard]):
            return  # not confirmed: they are left out of this call only
        dead = liveness.dead_among(dead)
        if not dead:
            return
        by_shard: dict[int, set[str]] = {}
        for name in {non_local_name(channel) for channel in dead}:
            by_shard.setdefault(shard_index(name, self.ring_size), set()).add(
                self._keys.queue(name)
            )
        shards = resources.shards
        results = await asyncio.gather(
            shards[shard_index(group, self.ring_size)].group_remove(self._keys.group(group), dead),
            *(shards[index].unlink(sorted(queues)) for index, queues in by_shard.items()),
            return_exceptions=True,
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # a cancellation
        if errors:
            self._removal_log.warning(
                "Could not remove channels of dead processes from group %s: %s", group, errors[0]
            )
            return
        logger.info("Removed %d channel(s) of dead processes from group %s", len(dead), group)

    def _watch(self, resources: LoopResources) -> None:
        """Start reading the view of the dead when it is out of date, which happens only in a
        layer that does not heartbeat, at most once per interval. The read is sent alongside
        the caller's and never awaited: the view it brings serves the calls that follow, so
        a registry that is slow or unreachable never delays a group send."""
        liveness = self._liveness
        if liveness is not None and not liveness.fresh:
            resources.refresh(partial(liveness.refresh, resources.shards[self._registry_shard]))

    @property
    def _registry_shard(self) -> int:
        return shard_index(self._keys.alive(), self.ring_size)

    def _keep_alive(self, resources: LoopResources) -> None:
        """Make sure the loop that receives runs the heartbeat (the previous loop's stops):
        one heartbeat per layer, which ends with the loop that receives."""
        liveness = self._liveness
        if liveness is None:
            return
        owner = self._heartbeat_owner() if self._heartbeat_owner is not None else None
        if owner is resources and resources.heartbeating:
            return
        if owner is not None:
            owner.stop_heartbeat()
        resources.start_heartbeat(liveness.heartbeat(resources.shards[self._registry_shard]))
        self._heartbeat_owner = weakref.ref(resources)

    def _check_owned(self, channel: str) -> None:
        if not non_local_name(channel).endswith(f".{self.client_prefix}!"):
            raise ValueError(
                f"Cannot receive on {channel!r}: it is a process-local channel of another "
                "process or layer instance (only the layer whose new_channel() made it can)"
            )

    def _enter_receive(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._receiving and self._receive_loop is not loop:
            raise RuntimeError(
                "receive() is already running on this layer in another event loop; a layer "
                "receives on one event loop at a time"
            )
        self._receive_loop = loop
        self._receiving += 1

    def _leave_receive(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._receive_loop is not loop:
            return  # a receive() of a loop closed under it, already forgotten
        self._receiving -= 1
        if not self._receiving:
            self._receive_loop = None

    def _forget_loop(self, loop: asyncio.AbstractEventLoop, resources: LoopResources) -> None:
        """``loop`` was closed without cleanup: its receive() calls will never return (what
        they were handed goes to the next receive() on any loop, which also unregisters them
        from the mailbox, in its own thread), and its readers' pops may still block on the
        servers (the next operation ends them, see ``_resources``)."""
        self._dead_loops.append(loop)
        self._dead_pops += [
            (index, reader.wake_key) for (index, _), reader in resources.readers.items()
        ]
        if self._receive_loop is loop:
            self._receive_loop, self._receiving = None, 0

    def _poke_readers(self, queue: str) -> None:
        """A full buffer has room again: the readers of ``queue`` may pop more."""
        resources = self._loops.existing()
        if resources is not None:
            for reader in resources.readers_of(queue):
                reader.poke()

    def _start_readers(self, resources: LoopResources, channel: str, queue: str) -> None:
        """Make sure the queue holding ``channel`` is being popped on the shard(s) it lives on.

        A process-local queue lives on its name's shard and is popped in batches. A normal
        channel is read on every shard, one message per pop, because processes running
        channels_redis spread a normal channel's messages over all shards.
        """
        if is_process_local(channel):
            indexes: Iterable[int] = [shard_index(non_local_name(channel), self.ring_size)]
            batch = self.capacity
        else:
            indexes = range(self.ring_size)
            batch = 1
        for index in indexes:
            running = resources.reader(index, queue)
            if running is not None:
                running.poke()
                continue
            shard = resources.shards[index]
            deliver = (
                partial(self._deliver_local, shard, queue)
                if is_process_local(channel)
                else partial(self._deliver_normal, shard, queue, channel)
            )
            reader = QueueReader(
                shard,
                queue,
                self._keys.wake(queue, self.client_prefix),
                batch=batch,
                block=BLOCK_SECONDS,
                demand=self._mailbox.demand,
                deliver=deliver,
                fail=partial(self._mailbox.fail, queue),
                stats=self._stats,
            )
            resources.add_reader(index, reader)

    def _serialize(self, message: Message, target: str) -> bytes:
        """The message's bytes, checked against ``max_message_size`` before any I/O."""
        payload = self._serializer.serialize(message)
        return check_size(payload, self.config.max_message_size, target)

    def _payloads_for(self, write: QueueWrite, messages: list[Message]) -> list[bytes] | None:
        """A process queue's own copies of a bulk send's messages, naming its member
        channels; ``None`` for a normal channel, which takes the shared copies."""
        if not write.local_channels:
            return None
        names = list(write.local_channels)
        return [self._serializer.serialize({**m, RESERVED_KEY: names}) for m in messages]

    def _payload_for(self, write: QueueWrite, message: Message, shared: bytes) -> bytes:
        """A process queue's copy names its member channels; normal channels share one."""
        if not write.local_channels:
            return shared
        return self._serializer.serialize({**message, RESERVED_KEY: list(write.local_channels)})

    def _decode(self, popped: Popped, queue: str) -> Message | None:
        """The message, or ``None`` (logged, rate-limited, and counted) when this process
        cannot decode it: another serializer, or encryption keys it lacks."""
        try:
            message: Message = self._serializer.deserialize(popped.payload)
        except Exception as error:
            self._stats.undecodable += 1
            self._undecodable_log.warning(
                "Could not decode a message popped from %s (%s: %s); is every process "
                "configured with the same serializer_format and symmetric_encryption_keys?",
                queue,
                type(error).__name__,
                error,
            )
            return None
        return message

    async def _deliver_local(self, shard: QueueServer, queue: str, batch: list[Popped]) -> bool:
        """Hand on what was popped from this process's queue. Nobody else reads that queue,
        so what this process cannot decode is kept aside in Valkey for inspection, before
        the rest is handed on (so it is there by the time a later message is received)."""
        decoded: list[tuple[Popped, Message]] = []
        undecodable: list[Popped] = []
        for popped in batch:
            message = self._decode(popped, queue)
            if message is None:
                undecodable.append(popped)
            else:
                decoded.append((popped, message))
        if undecodable:
            items = [(popped.sent_at, popped.payload) for popped in undecodable]
            try:
                await shard.requeue(self._keys.undecodable(queue), self.expiry, items)
            except Exception as error:  # the rest of the batch must still be handed on
                logger.warning(
                    "Could not keep %d undecodable message(s) of %s aside: %s",
                    len(items),
                    queue,
                    error,
                )
        for popped, message in decoded:
            targets = message.pop(RESERVED_KEY, None)
            if isinstance(targets, str):
                self._mailbox.offer(targets, queue, popped.sent_at, message, keep=True)
            elif isinstance(targets, list):
                for target in targets:
                    self._mailbox.offer(target, queue, popped.sent_at, dict(message), keep=True)
            else:
                logger.warning("Dropped a message without %s in a process queue", RESERVED_KEY)
        return True

    async def _deliver_normal(
        self, shard: QueueServer, queue: str, channel: str, batch: list[Popped]
    ) -> bool:
        """Hand a normal channel's messages to waiting receive() calls. Another process may
        want what nobody here waits for, or what this process cannot decode, so that goes
        back to Valkey untouched, at its place in the queue; ``False`` when something could
        not be decoded (the reader then pauses, leaving it to a process that can)."""
        unclaimed: list[tuple[Popped, Message | None]] = []
        decoded = True
        for popped in batch:
            if not self._mailbox.has_waiter(channel):
                unclaimed.append((popped, None))
                continue
            message = self._decode(popped, queue)
            if message is None:
                decoded = False
                unclaimed.append((popped, None))
                continue
            message.pop(RESERVED_KEY, None)
            if not self._mailbox.offer(channel, queue, popped.sent_at, message, keep=False):
                unclaimed.append((popped, message))
        if unclaimed:
            await self._put_back(shard, queue, channel, unclaimed, decoded=decoded)
        return decoded

    async def _put_back(
        self,
        shard: QueueServer,
        queue: str,
        channel: str,
        unclaimed: list[tuple[Popped, Message | None]],
        *,
        decoded: bool,
    ) -> None:
        items = [(popped.sent_at, popped.payload) for popped, _ in unclaimed]
        try:
            await shard.requeue(queue, self.expiry, items)
        except Exception as error:
            # Valkey cannot take them back now: keep them for this process's next receive()
            # of the channel rather than lose them; only what it cannot decode is lost.
            logger.warning("Kept %d message(s) for %s locally: %s", len(items), channel, error)
            for popped, message in unclaimed:
                if message is None and decoded:
                    message = self._decode(popped, queue)
                if message is not None:
                    message.pop(RESERVED_KEY, None)
                    self._mailbox.offer(channel, queue, popped.sent_at, message, keep=True)
