"""The pub/sub layer on one event loop: its local state, connections and tasks, closed together.

Connections, futures and tasks belong to the loop that made them, and Django runs the layer on
several loops (the server's, and a short-lived one per ``async_to_sync`` call), so each loop
gets its own :class:`LoopLayer`: its own publish pools, its own subscriber per shard (or per
cluster primary), its own local channels. A channel is local to the loop it was made on.

It is closed with its loop, or by ``close()``, as ``_common.per_loop`` describes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from channels_valkey._common.hosts import ClusterHost
from channels_valkey._common.per_loop import LoopOwned
from channels_valkey.stats import StatsRecorder

from .cluster import ClusterPlacement
from .config import PubSubConfig
from .placement import Placement, PubSubHost, ServerPlacement
from .state import ChannelClosed, Drops, Inbox, Item, LocalState
from .subscriber import Hooks, Subscriber

logger = logging.getLogger(__name__)


class LoopLayer(LoopOwned):
    """Everything the pub/sub layer holds on one event loop; :meth:`aclose` closes it all."""

    def __init__(
        self,
        config: PubSubConfig,
        stats: StatsRecorder,
        drops: Drops,
        on_closed: Callable[[], None],
    ) -> None:
        self.config = config
        self.state = LocalState(config.capacity, drops)
        hooks = Hooks(
            on_message=self.state.deliver, on_down=self._down, on_up=self._up, stats=stats
        )
        host = config.hosts[0]
        self.placement: Placement = (
            ClusterPlacement(host, hooks)
            if isinstance(host, ClusterHost)
            else ServerPlacement(cast("list[PubSubHost]", list(config.hosts)), hooks)
        )
        #: Per subscriber: local channels told about an outage and not yet about its end.
        self._missed: dict[object, set[str]] = {}
        super().__init__(on_closed)

    def __repr__(self) -> str:
        return f"<LoopLayer {self.state!r} {self.placement!r}>"

    @property
    def subscribers(self) -> list[Subscriber]:
        return self.placement.subscribers

    # --- sending -------------------------------------------------------------------------

    async def publish(self, name: str, payload: bytes) -> int:
        """Publish on the server carrying ``name``; returns how many subscribers got it."""
        return await self.placement.publish(name, payload)

    async def publish_many(self, name: str, payloads: list[bytes]) -> list[int]:
        """Publish each payload on ``name`` in order, in one pipeline."""
        return await self.placement.publish_many(name, payloads)

    # --- local channels ------------------------------------------------------------------

    def owns(self, channel: str) -> bool:
        return self.state.inbox(channel) is not None

    async def open(self, channel: str) -> None:
        """Make ``channel`` local and return once the server confirmed its subscription."""
        inbox = self.state.open(channel)
        try:
            await self.placement.subscribe(channel)
        except BaseException:
            if not inbox.receivers:
                self._free(channel, inbox)
            raise

    async def receive(self, channel: str) -> Item:
        """The next item for ``channel``, which is made local first if it is not.

        Leaving by an exception (a cancelled ``receive()``: the consumer went away) frees the
        channel, unless another ``receive()`` still waits on it.
        """
        inbox = self.state.open(channel)
        inbox.receivers += 1
        try:
            await self.placement.subscribe(channel)
            item = await inbox.get()
        except GeneratorExit:
            raise  # its loop was closed under it: nothing of that loop can run any more
        except BaseException:
            inbox.receivers -= 1
            if not inbox.receivers:
                self._free(channel, inbox)
            raise
        inbox.receivers -= 1
        return item

    def _free(self, channel: str, inbox: Inbox) -> None:
        if self.state.inbox(channel) is not inbox:
            return  # already freed (flush, close), maybe made again since
        for name in self.state.free(channel):
            self.placement.unsubscribe(name)

    # --- groups --------------------------------------------------------------------------

    async def group_add(self, group_channel: str, channel: str) -> None:
        """Put local ``channel`` in the group; returns once the group is subscribed."""
        joined = self.state.join(group_channel, channel)
        try:
            await self.placement.subscribe(group_channel)
        except BaseException:
            if joined:
                self.group_discard(group_channel, channel)
            raise

    async def group_size(self, group_channel: str) -> int:
        """This loop's channels in the group, plus one per other connection subscribed to it
        (each is a process or loop with at least one channel in it): exact for this loop, a
        lower bound for the others."""
        local = self.state.members_of(group_channel)
        subscribed = await self.placement.subscribed(group_channel)
        # This loop's own subscription is counted by the server while it has members here.
        return local + max(0, subscribed - (1 if local else 0))

    def group_discard(self, group_channel: str, channel: str) -> None:
        if self.state.leave(group_channel, channel):
            self.placement.unsubscribe(group_channel)

    # --- connection notices --------------------------------------------------------------

    def _down(self, key: object, names: list[str], moved: bool) -> None:
        """Tell each concerned channel once per outage of a subscriber, even if reconnecting
        fails and drops again."""
        missed = self._missed.setdefault(key, set())
        channels = self.state.affected(names) - missed
        if not channels:
            return
        missed |= channels
        if moved:
            logger.warning(
                "Pub/sub names moved away from %s: %d local channel(s) may miss messages "
                "until they are subscribed where they live now",
                self.placement.describe(key),
                len(channels),
            )
        else:
            logger.warning(
                "Lost the pub/sub connection to %s: %d local channel(s) miss messages until "
                "it is back",
                self.placement.describe(key),
                len(channels),
            )
        if self.config.on_disconnect is not None:
            self.state.notify(channels, {"type": self.config.on_disconnect})

    def _up(self, key: object) -> None:
        channels = self._missed.pop(key, set())
        if self.config.on_reconnect is not None:
            self.state.notify(channels, {"type": self.config.on_reconnect})

    # --- closing -------------------------------------------------------------------------

    def _abandon(self) -> None:
        self.placement.abandon()

    async def _release(self) -> None:
        """Forget the local state, stop the subscribers, close the pools."""
        self.state.clear(ChannelClosed("the channel layer was flushed or closed"))
        await self.placement.aclose()
