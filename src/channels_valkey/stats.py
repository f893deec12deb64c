"""Counters of what a layer did, read with ``layer.stats()``.

Counting costs a few integer additions in process memory and no round trip. Counters start
at zero when the layer is built and only grow; compare two snapshots to get rates. They
cover the whole layer, across every event loop it ran on.

The bulk forms count as the single calls they replace: ``send_multiple`` of n messages as n
``send`` calls (refused: n ``channel_full``), ``group_send_multiple`` of n messages as n
``group_send`` calls (a member skipped for lack of room: n ``group_members_full``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class LayerStats:
    """A snapshot of a layer's counters."""

    #: Messages accepted by ``send`` (not counting those refused with ``ChannelFull``).
    messages_sent: int = 0
    #: Messages handed to a ``receive()`` call.
    messages_received: int = 0
    #: ``send`` calls refused with ``ChannelFull``.
    channel_full: int = 0
    #: Messages dropped in this process because a channel's local buffer was full.
    dropped_from_buffers: int = 0
    #: Messages found older than ``expiry`` and discarded instead of delivered.
    expired: int = 0
    #: Messages this process popped but could not decode (another serializer, or keys it
    #: lacks); each went back to Valkey (normal channels) or was kept there for inspection.
    undecodable: int = 0
    #: ``group_send`` calls.
    group_sends: int = 0
    #: Copies ``group_send`` queued or published (its fan-out); members skipped as full
    #: are not counted.
    group_deliveries: int = 0
    #: Group members skipped by ``group_send`` because their channel was full.
    group_members_full: int = 0
    #: Connections to a server lost and opened again.
    reconnects: int = 0
    #: Seconds spent without a working connection to some server, summed over outages.
    seconds_disconnected: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


class StatsRecorder:
    """The live counters behind :class:`LayerStats`: plain attributes, bumped in place.

    Outages are counted per connection: ``disconnected()`` when one is lost,
    ``reconnected()`` when it works again.
    """

    def __init__(self) -> None:
        self.messages_sent = 0
        self.messages_received = 0
        self.channel_full = 0
        self.dropped_from_buffers = 0
        self.expired = 0
        self.undecodable = 0
        self.group_sends = 0
        self.group_deliveries = 0
        self.group_members_full = 0
        self.reconnects = 0
        self._seconds_disconnected = 0.0
        self._down_since: dict[object, float] = {}

    def disconnected(self, connection: object) -> None:
        self._down_since.setdefault(connection, time.monotonic())

    def reconnected(self, connection: object) -> None:
        if self._end_outage(connection):
            self.reconnects += 1

    def closed(self, connection: object) -> None:
        """The connection is gone for good: its outage, if any, ends without a reconnect."""
        self._end_outage(connection)

    def _end_outage(self, connection: object) -> bool:
        since = self._down_since.pop(connection, None)
        if since is None:
            return False
        self._seconds_disconnected += time.monotonic() - since
        return True

    def snapshot(self) -> LayerStats:
        now = time.monotonic()
        ongoing = sum(now - since for since in self._down_since.values())
        return LayerStats(
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            channel_full=self.channel_full,
            dropped_from_buffers=self.dropped_from_buffers,
            expired=self.expired,
            undecodable=self.undecodable,
            group_sends=self.group_sends,
            group_deliveries=self.group_deliveries,
            group_members_full=self.group_members_full,
            reconnects=self.reconnects,
            seconds_disconnected=self._seconds_disconnected + ongoing,
        )
