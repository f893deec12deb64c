"""The core layer's options, checked once at construction into one frozen value.

Names and defaults are those of ``channels_redis`` 4.x so settings move over unchanged. Each
check raises :class:`~channels_valkey.exceptions.ConfigurationError` naming the option.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels_valkey._common.hosts import Host, on_cluster, parse_hosts
from channels_valkey._common.options import (
    check_prefix,
    non_negative_int,
    optional_size,
    positive_int,
    positive_seconds,
)
from channels_valkey.exceptions import ConfigurationError

CapacityRule = tuple["re.Pattern[str]", int]

#: ``process_expiry``'s default: long enough that a process stalled by a slow disk, a long
#: garbage collection or a server failover is not taken for dead; short enough that a killed
#: process stops costing group sends within about a minute.
DEFAULT_PROCESS_EXPIRY = 60.0

#: The shortest ``process_expiry``: heartbeats go out four times per expiry, and one more
#: often than every quarter of a second would cost more than it could tell.
MIN_PROCESS_EXPIRY = 1.0


@dataclass(frozen=True)
class LayerConfig:
    hosts: tuple[Host, ...]
    prefix: str
    expiry: int
    group_expiry: int
    capacity: int
    channel_capacity: tuple[CapacityRule, ...]
    random_prefix_length: int
    #: Replicas that must confirm each ``send`` (``WAIT``); 0 does not wait.
    wait_for_replicas: int = 0
    #: Seconds ``send`` waits for those confirmations.
    replica_timeout: float = 1.0
    #: Seconds of silence after which a process that heartbeats is taken for dead (its
    #: channels leave groups, see ``_queue.liveness``); ``None`` turns liveness off.
    process_expiry: float | None = DEFAULT_PROCESS_EXPIRY
    #: The most bytes a serialized message may have; ``None`` for no limit.
    max_message_size: int | None = None

    def capacity_of(self, channel: str) -> int:
        """The first ``channel_capacity`` rule that matches wins, else ``capacity``."""
        for pattern, capacity in self.channel_capacity:
            if pattern.match(channel):
                return capacity
        return self.capacity


def build_config(
    *,
    hosts: object,
    prefix: object,
    expiry: object,
    group_expiry: object,
    capacity: object,
    channel_capacity: object,
    random_prefix_length: object,
    wait_for_replicas: object = 0,
    replica_timeout: object = 1.0,
    process_expiry: object = DEFAULT_PROCESS_EXPIRY,
    max_message_size: object = None,
) -> LayerConfig:
    parsed_hosts = parse_hosts(hosts)
    return LayerConfig(
        hosts=parsed_hosts,
        prefix=check_cluster_prefix(parsed_hosts, check_prefix(prefix)),
        expiry=positive_int("expiry", expiry),
        group_expiry=positive_int("group_expiry", group_expiry),
        capacity=positive_int("capacity", capacity),
        channel_capacity=compile_capacities(channel_capacity),
        random_prefix_length=non_negative_int("random_prefix_length", random_prefix_length),
        wait_for_replicas=non_negative_int("wait_for_replicas", wait_for_replicas),
        replica_timeout=positive_seconds("replica_timeout", replica_timeout),
        process_expiry=check_process_expiry(process_expiry),
        max_message_size=optional_size("max_message_size", max_message_size),
    )


def check_cluster_prefix(hosts: tuple[Host, ...], prefix: str) -> str:
    """On a cluster the layer puts names in braces (hash tags), so the prefix may have none."""
    if on_cluster(hosts) and ("{" in prefix or "}" in prefix):
        raise ConfigurationError(
            "prefix may not contain '{' or '}' on a cluster: the layer puts names in "
            "braces to keep each queue's keys in one slot"
        )
    return prefix


def check_process_expiry(value: object) -> float | None:
    """``None`` turns liveness off; otherwise seconds, at least ``MIN_PROCESS_EXPIRY``."""
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not value >= MIN_PROCESS_EXPIRY
        or value == float("inf")
    ):
        raise ConfigurationError(
            f"process_expiry must be a number of seconds >= {MIN_PROCESS_EXPIRY:g}, or None "
            f"to turn liveness off, got {value!r}"
        )
    return float(value)


def compile_capacities(channel_capacity: object) -> tuple[CapacityRule, ...]:
    """Compile ``{glob or compiled regex: capacity}`` in the mapping's order."""
    if channel_capacity is None:
        return ()
    if not isinstance(channel_capacity, Mapping):
        raise ConfigurationError(
            "channel_capacity must be a dict of {channel glob or compiled regex: capacity}, "
            f"got {type(channel_capacity).__name__}"
        )
    rules: list[CapacityRule] = []
    for pattern, value in channel_capacity.items():
        capacity = positive_int(f"channel_capacity[{pattern!r}]", value)
        rules.append((_compile(pattern), capacity))
    return tuple(rules)


def _compile(pattern: Any) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    if isinstance(pattern, str):
        return re.compile(fnmatch.translate(pattern))
    raise ConfigurationError(
        f"channel_capacity keys must be glob strings or compiled regexes, got {pattern!r}"
    )
