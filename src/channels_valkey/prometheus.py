"""Export layer counters to Prometheus through ``prometheus_client`` (the ``prometheus`` extra).

Usage, once per process (for example in ``asgi.py``)::

    from channels.layers import get_channel_layer
    from channels_valkey.prometheus import register

    register(get_channel_layer(), alias="default")

Every scrape reads a fresh :class:`~channels_valkey.stats.LayerStats` snapshot; nothing is
counted twice and nothing runs between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import Any, Protocol

from .exceptions import ConfigurationError
from .stats import LayerStats

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "channels_valkey.prometheus needs prometheus_client: "
        "pip install 'channels-valkey[prometheus]'"
    ) from error

#: Help text per counter, from the field docs in ``stats.LayerStats``.
_HELP = {
    "messages_sent": "Messages accepted by send",
    "messages_received": "Messages handed to receive()",
    "channel_full": "send calls refused with ChannelFull",
    "dropped_from_buffers": "Messages dropped because a local buffer was full",
    "expired": "Messages discarded as older than expiry",
    "undecodable": "Messages this process could not decode, put back or kept aside",
    "group_sends": "group_send calls",
    "group_deliveries": "Copies queued or published by group_send",
    "group_members_full": "Group members skipped as full",
    "reconnects": "Connections lost and opened again",
    "seconds_disconnected": "Seconds without a working connection to some server",
}


class _HasStats(Protocol):
    def stats(self) -> LayerStats: ...


class LayerCollector(Collector):
    """Reads ``layer.stats()`` at each scrape, as ``channels_valkey_<counter>_total``."""

    def __init__(self, layer: _HasStats, alias: str) -> None:
        self._layer = layer
        self._alias = alias

    def collect(self) -> Iterator[Any]:
        snapshot = self._layer.stats()
        for field in fields(snapshot):
            metric = CounterMetricFamily(
                f"channels_valkey_{field.name}", _HELP[field.name], labels=["layer"]
            )
            metric.add_metric([self._alias], getattr(snapshot, field.name))
            yield metric


def register(
    layer: object, *, alias: str = "default", registry: CollectorRegistry | None = None
) -> LayerCollector:
    """Expose ``layer``'s counters, labelled ``layer=alias``, in ``registry`` (the default)."""
    if not callable(getattr(layer, "stats", None)):
        raise ConfigurationError(
            f"{type(layer).__name__} has no stats(); pass a channels_valkey layer"
        )
    collector = LayerCollector(layer, alias)  # type: ignore[arg-type]
    (registry or REGISTRY).register(collector)
    return collector
