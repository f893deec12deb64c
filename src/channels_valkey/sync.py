"""Publishing to a channel layer from synchronous code: views, signals, management commands,
Celery tasks.

``async_to_sync(layer.group_send)(...)`` makes an event loop per call, and a layer's
connections belong to one loop, so every such call opens and closes a connection. These
functions run the layer's methods on one long-lived event loop per process instead (see
``_common.background``), whose connections stay open between calls::

    from channels_valkey import sync

    sync.group_send("chat", {"type": "chat.message", "text": "hello"})
    sync.send("specific.abc!def", {"type": "notify"}, alias="events")

The layer is the one Channels gives for ``alias`` (``get_channel_layer(alias)``), of any
backend. Any number of threads may call at once. Each call returns once the layer's method has
returned, and raises what it raised (``ChannelFull``, ``ServerUnreachable``, ``TypeError`` for
a bad name or message...). There is no timeout of its own: the layer's methods are bounded
already (``ServerUnreachable`` once its retry deadline passes), so a timeout here could only
abandon a call the layer is still making. Calling from a running event loop raises
``RuntimeError``: await the layer's method there.

The loop's thread starts on the first call and ends at interpreter exit, closing its
connections; before ``os.fork()`` it is stopped too, so a forked child (a Celery prefork or
gunicorn worker) starts its own on first use and shares no socket with its parent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from channels.exceptions import InvalidChannelLayerError
from channels.layers import get_channel_layer

from ._common.background import background

__all__ = ["group_send", "group_send_multiple", "send", "send_multiple"]


def send(channel: str, message: dict[str, Any], alias: str = DEFAULT_CHANNEL_LAYER) -> None:
    """Send ``message`` to ``channel`` on the layer ``alias``; raises ``ChannelFull`` when the
    channel is at capacity, as the layer's ``send`` does."""
    _call("send", alias, channel, message)


def group_send(group: str, message: dict[str, Any], alias: str = DEFAULT_CHANNEL_LAYER) -> None:
    """Send ``message`` to every channel of ``group`` on the layer ``alias``."""
    _call("group_send", alias, group, message)


def send_multiple(
    channel: str, messages: Sequence[dict[str, Any]], alias: str = DEFAULT_CHANNEL_LAYER
) -> None:
    """Queue ``messages`` on ``channel`` in order, all or none (the layer's
    ``send_multiple``; this package's layers have it, other backends may not)."""
    _call("send_multiple", alias, channel, messages)


def group_send_multiple(
    group: str, messages: Sequence[dict[str, Any]], alias: str = DEFAULT_CHANNEL_LAYER
) -> None:
    """Send every member of ``group`` all of ``messages``, in order (the layer's
    ``group_send_multiple``)."""
    _call("group_send_multiple", alias, group, messages)


_resolved_lock = threading.Lock()
#: The layer each alias resolved to last, to notice when Channels makes a new one.
_resolved: dict[str, Any] = {}


def _call(method: str, alias: str, *args: Any) -> None:
    layer, replaced = _layer(alias)
    bound = getattr(layer, method)

    async def call() -> None:
        if replaced is not None:
            await _close_on_this_loop(replaced)
        await bound(*args)

    background.run(call, caller=f"channels_valkey.sync.{method}")


def _layer(alias: str) -> tuple[Any, Any]:
    """The layer of ``alias``, and the one it replaced, if Channels replaced it since the last
    call (a change of ``CHANNEL_LAYERS``, as ``override_settings`` makes in tests)."""
    # Under the lock, so that threads calling at once for the first time get one layer:
    # Channels makes the layer on first use, and does not guard against two threads doing so.
    with _resolved_lock:
        layer = get_channel_layer(alias)
        if layer is None:
            raise InvalidChannelLayerError(
                f"No channel layer with alias {alias!r} in CHANNEL_LAYERS"
            )
        previous = _resolved.get(alias)
        _resolved[alias] = layer
    return layer, (previous if previous is not None and previous is not layer else None)


async def _close_on_this_loop(layer: Any) -> None:
    """Close the connections a replaced layer holds on the background loop, rather than leave
    them open until the process exits. Only layers that keep connections per loop have this
    method; any other layer is left alone."""
    close = getattr(layer, "close_pools", None)
    if close is not None:
        await close()
