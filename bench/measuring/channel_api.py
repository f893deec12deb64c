"""How a measuring process makes, fills and closes a layer: the Channels layer API only.

Any layer class works, ours or a peer's, because nothing beyond ``new_channel``, ``send``,
``receive``, ``group_add`` and ``group_send`` (and closing) is used. Options beyond the
defaults are the exception, and ``layer_options`` says why each one is needed.
Runs in the measured layer's venv.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any

from shared.resp import CLUSTER_SCHEME, nodes_of

GROUP = "bench-group"
#: ``concurrent-*-local`` on core layers: all process-local channels of a process share one
#: queue, so N senders with CONCURRENT_WINDOW in flight each could exceed the default
#: capacity of 100 there; this capacity leaves room for any of them.
CONCURRENT_CAPACITY = 10_000


def make_layer(path: str, url: str, **options: Any) -> Any:
    """The layer class at ``path`` on the server at ``url``, or on the cluster of a
    ``cluster://`` URL (every node a startup node), with ``options`` beyond ``hosts``."""
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if url.startswith(CLUSTER_SCHEME):
        return cls(hosts=[{"cluster": True, "startup_nodes": nodes_of(url)}], **options)
    return cls(hosts=[url], **options)


def layer_options(workload: str, kind: str) -> dict[str, Any]:
    """Options a workload needs beyond the defaults: only ``concurrent-*-local`` on core
    layers, whose senders together keep more messages in flight than one shared queue of the
    default capacity holds (see CONCURRENT_CAPACITY)."""
    if workload.startswith("concurrent-") and workload.endswith("-local") and kind == "core":
        return {"capacity": CONCURRENT_CAPACITY}
    return {}


async def close_layer(layer: Any, kind: str) -> None:
    """Close the layer's connections (a pub/sub ``flush`` only forgets local state)."""
    close = getattr(layer, "close_pools", None) if kind == "core" else None
    if close is None:
        close = layer.flush
    try:
        await asyncio.wait_for(close(), 20)
    except Exception as error:
        print(f"closing the layer failed: {type(error).__name__}: {error}", file=sys.stderr)


async def make_members(layer: Any, count: int) -> list[str]:
    """``count`` new channels of this process, all added to GROUP."""
    channels = [await layer.new_channel() for _ in range(count)]
    for start in range(0, count, 100):
        await asyncio.gather(*(layer.group_add(GROUP, c) for c in channels[start : start + 100]))
    return channels
