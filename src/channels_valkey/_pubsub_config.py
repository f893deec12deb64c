"""The pub/sub layer's options, checked once at construction into one frozen value.

The pub/sub layer keeps nothing on the server, so the core layer's storage options
(``expiry``, ``group_expiry``, ``channel_capacity``, ``random_prefix_length``) have no meaning
here. They are refused with a message saying so rather than silently ignored: a user who set
``expiry`` expects messages to wait, and they never do with pub/sub.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._config import check_prefix, positive_int
from ._hosts import ClusterHost, Host, parse_hosts
from .exceptions import ConfigurationError

_STORAGE_OPTIONS = frozenset({"expiry", "group_expiry", "channel_capacity", "random_prefix_length"})

ACCEPTED_OPTIONS = (
    "hosts",
    "prefix",
    "capacity",
    "symmetric_encryption_keys",
    "serializer_format",
    "on_disconnect",
    "on_reconnect",
)


@dataclass(frozen=True)
class PubSubConfig:
    hosts: tuple[Host, ...]
    prefix: str
    #: Messages a local channel holds for its consumer before new ones are dropped.
    capacity: int
    #: Message types delivered to local channels when a shard's connection drops / returns.
    on_disconnect: str | None
    on_reconnect: str | None

    @property
    def on_cluster(self) -> bool:
        return isinstance(self.hosts[0], ClusterHost)

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
) -> PubSubConfig:
    check_unknown(unknown)
    return PubSubConfig(
        hosts=check_hosts(hosts),
        prefix=check_prefix(prefix),
        capacity=positive_int("capacity", capacity),
        on_disconnect=check_hook("on_disconnect", on_disconnect),
        on_reconnect=check_hook("on_reconnect", on_reconnect),
    )


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
