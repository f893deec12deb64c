"""Helpers for the wire-compatibility tests: one layer of each package on the same servers.

"Ours" is ``channels_valkey``'s layer, "theirs" is channels_redis 4.x's. Receives are wrapped
in ``asyncio.wait_for`` (channels_redis's ``receive()`` blocks forever), so a lost message
fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import pytest
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ValkeyChannelLayer
from support.servers import ValkeyServer

Side = Literal["ours", "theirs"]
Layer: TypeAlias = ValkeyChannelLayer | RedisChannelLayer
OpenLayer = Callable[..., Layer]

#: How long any one expected message may take.
RECEIVE_TIMEOUT = 5.0
#: How long to watch for a message that must not come. Every message it could be was written
#: before the wait starts, so this only has to cover reading it back.
SILENCE_TIMEOUT = 0.5

#: ``(sender, receiver)``: the side that writes and the side that reads.
DIRECTIONS = [
    pytest.param(("ours", "theirs"), id="ours-to-theirs"),
    pytest.param(("theirs", "ours"), id="theirs-to-ours"),
]
SIDES = [pytest.param("ours", id="ours"), pytest.param("theirs", id="theirs")]


def redis_urls(servers: list[ValkeyServer]) -> list[str]:
    """One ``hosts`` list both packages accept (redis-py knows no ``valkey://`` scheme)."""
    return [f"redis://{server.host}:{server.port}" for server in servers]


async def receive(layer: Layer, channel: str) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)
    except asyncio.TimeoutError:
        kind = type(layer).__name__
        pytest.fail(f"{kind} received nothing on {channel!r} within {RECEIVE_TIMEOUT} s")


async def receive_many(layer: Layer, channel: str, count: int) -> list[dict[str, Any]]:
    return [await receive(layer, channel) for _ in range(count)]


async def assert_nothing_for(layer: Layer, channel: str) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), SILENCE_TIMEOUT)


def keys_of(servers: list[ValkeyServer], prefix: str = "asgi") -> list[bytes]:
    return sorted(key for server in servers for key in server.client().keys(f"{prefix}*"))


def payload(n: int) -> dict[str, Any]:
    """A message using every type msgpack carries (tuples would come back as lists)."""
    return {
        "type": "wire.test",
        "n": n,
        "text": "héllo ✓ 日本",
        "bytes": b"\x00\xff binary",
        "float": 1.5,
        "big": 2**62,
        "negative": -7,
        "flags": [True, False, None],
        "nested": {"list": [1, "two", {"three": 3}], "empty": {}},
    }
