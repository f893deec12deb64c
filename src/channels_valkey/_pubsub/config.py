"""The pub/sub layer's options, checked once at construction into one frozen value.

The pub/sub layer keeps nothing on the server, so the core layer's storage options
(``expiry``, ``group_expiry``, ``channel_capacity``, ``random_prefix_length``) have no meaning
here. They are refused with a message saying so rather than silently ignored: a user who set
``expiry`` expects messages to wait, and they never do with pub/sub.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from channels_valkey._common.hosts import Host, on_cluster, parse_hosts
from channels_valkey._common.options import check_prefix, optional_size, positive_int
from channels_valkey.exceptions import ConfigurationError

from .state import (
    DEFAULT_CHANNEL_BYTES,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TOTAL_BYTES,
    OverflowLimits,
)

_STORAGE_OPTIONS = frozenset({"expiry", "group_expiry", "channel_capacity", "random_prefix_length"})

ACCEPTED_OPTIONS = (
    "hosts",
    "prefix",
    "capacity",
    "stall_timeout",
    "channel_buffer_bytes",
    "total_buffer_bytes",
    "symmetric_encryption_keys",
    "serializer_format",
    "on_disconnect",
    "on_reconnect",
    "max_message_size",
)


@dataclass(frozen=True)
class PubSubConfig:
    hosts: tuple[Host, ...]
    prefix: str
    #: Messages a local channel always takes, and all it keeps once its consumer stopped
    #: reading (see ``_pubsub.state``).
    capacity: int
    #: Message types delivered to local channels when a shard's connection drops / returns.
    on_disconnect: str | None
    on_reconnect: str | None
    #: Beyond ``capacity``, while the consumer reads: when it counts as stopped, and how many
    #: bytes may wait per channel and for all local channels of an event loop together.
    overflow: OverflowLimits
    #: The most bytes a serialized message may have; ``None`` for no limit.
    max_message_size: int | None = None

    @property
    def on_cluster(self) -> bool:
        return on_cluster(self.hosts)

    def group_channel(self, group: str) -> str:
        """The pub/sub channel carrying ``group``'s messages (the channels_redis name)."""
        return f"{self.prefix}__group__{group}"


def build_pubsub_config(
    *,
    hosts: object,
    prefix: object,
    capacity: object,
    on_disconnect: object,
    on_reconnect: object,
    unknown: Mapping[str, object],
    stall_timeout: object = DEFAULT_STALL_TIMEOUT,
    channel_buffer_bytes: object = DEFAULT_CHANNEL_BYTES,
    total_buffer_bytes: object = DEFAULT_TOTAL_BYTES,
    max_message_size: object = None,
) -> PubSubConfig:
    check_unknown(unknown)
    return PubSubConfig(
        hosts=check_hosts(hosts),
        prefix=check_prefix(prefix),
        capacity=positive_int("capacity", capacity),
        on_disconnect=check_hook("on_disconnect", on_disconnect),
        on_reconnect=check_hook("on_reconnect", on_reconnect),
        overflow=check_overflow(stall_timeout, channel_buffer_bytes, total_buffer_bytes),
        max_message_size=optional_size("max_message_size", max_message_size),
    )


def check_overflow(
    stall_timeout: object, channel_buffer_bytes: object, total_buffer_bytes: object
) -> OverflowLimits:
    """``stall_timeout`` may be 0 (no channel ever holds more than ``capacity``); a total
    below the per-channel bound would silently lower it, so it is refused."""
    if (
        not isinstance(stall_timeout, int | float)
        or isinstance(stall_timeout, bool)
        or not 0 <= stall_timeout < float("inf")
    ):
        raise ConfigurationError(
            f"stall_timeout must be a number of seconds >= 0, got {stall_timeout!r}"
        )
    channel_bytes = positive_int("channel_buffer_bytes", channel_buffer_bytes)
    total_bytes = positive_int("total_buffer_bytes", total_buffer_bytes)
    if total_bytes < channel_bytes:
        raise ConfigurationError(
            f"total_buffer_bytes ({total_bytes}) must be >= channel_buffer_bytes "
            f"({channel_bytes}): it bounds all local channels of a process together"
        )
    return OverflowLimits(float(stall_timeout), channel_bytes, total_bytes)


def check_hosts(hosts: object) -> tuple[Host, ...]:
    """Servers and Sentinel primaries (several entries shard the names by consistent hash), or
    one Valkey Cluster entry (sharded pub/sub; ``parse_hosts`` makes sure it is alone)."""
    return parse_hosts(hosts)


def check_hook(option: str, value: object) -> str | None:
    """A hook is the ``type`` of the message consumers receive, e.g. ``"valkey.disconnect"``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{option} must be a message type such as 'valkey.disconnect' (a consumer's "
            f"valkey_disconnect handler then runs), or None; got {value!r}"
        )
    return value


def check_unknown(unknown: Mapping[str, object]) -> None:
    if not unknown:
        return
    names = ", ".join(sorted(unknown))
    storage = _STORAGE_OPTIONS & unknown.keys()
    why = (
        " The pub/sub layer stores no messages on the server, so storage options do not "
        "apply; use channels_valkey.core.ValkeyChannelLayer for messages that wait."
        if storage
        else ""
    )
    raise ConfigurationError(
        f"ValkeyPubSubChannelLayer got unknown option(s): {names}.{why} "
        f"Accepted options: {', '.join(ACCEPTED_OPTIONS)}."
    )
