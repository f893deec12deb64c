"""Key naming: the layout channels_redis 4.x uses, so both packages share one server.

- a channel's queue is a sorted set at ``prefix + channel``, scored by the send time; a
  process-local channel (``name!suffix``) shares the queue of its process, ``prefix + name!``;
- a group is a sorted set at ``prefix + ":group:" + group`` of channel names scored by the time
  they joined.

Keys of our own (never read by the peers) end in ``$`` followed by a word, a character that
cannot occur in a channel name, so they can never collide with a queue.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Ends the key of messages kept for inspection because their process could not decode them.
UNDECODABLE_SUFFIX = "$undecodable"

#: Ends the key of the registry of live processes (see ``KeySpace.alive``).
ALIVE_SUFFIX = "$alive"


def is_process_local(channel: str) -> bool:
    return "!" in channel


def non_local_name(channel: str) -> str:
    """The part of a process-local channel name up to and including ``!``."""
    bang = channel.find("!")
    return channel if bang == -1 else channel[: bang + 1]


def process_of(channel: str) -> str | None:
    """The ``client_prefix`` of the layer that made a process-local channel
    (``<prefix>.<client_prefix>!<suffix>``), or ``None`` for a normal channel."""
    bang = channel.find("!")
    if bang == -1:
        return None
    return channel[:bang].rpartition(".")[2]


@dataclass(frozen=True)
class KeySpace:
    """All key names under one ``prefix``.

    With ``hash_tags`` (on a Valkey Cluster) the channel or group name is wrapped in ``{}``,
    so a queue and the keys a script or a blocking pop touch with it (its wake key) hash to
    one slot: ``asgi{specific.ab12!}``, ``asgi:group:{room}``. Without, the names are exactly
    those of channels_redis.
    """

    prefix: str
    hash_tags: bool = False

    def queue(self, channel: str) -> str:
        """The queue that holds messages for ``channel``."""
        name = non_local_name(channel)
        return f"{self.prefix}{{{name}}}" if self.hash_tags else self.prefix + name

    def group(self, group: str) -> str:
        tagged = f"{{{group}}}" if self.hash_tags else group
        return f"{self.prefix}:group:{tagged}"

    def wake(self, queue_key: str, reader: str) -> str:
        """A key a stopping reader blocks on beside its queue (see ``_queue.reader``)."""
        return f"{queue_key}$wake:{reader}"

    def alive(self) -> str:
        """The registry of processes that take part in liveness (see ``_queue.liveness``): a sorted
        set of ``client_prefix`` scored by each one's last heartbeat, in the server's clock."""
        return f"{self.prefix}{ALIVE_SUFFIX}"

    def undecodable(self, queue_key: str) -> str:
        """Where messages of a process queue that its process could not decode are kept
        for inspection (see ``core``)."""
        return f"{queue_key}{UNDECODABLE_SUFFIX}"

    def pattern(self) -> str:
        """A ``SCAN MATCH`` pattern for every key under this prefix."""
        return "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix) + "*"
