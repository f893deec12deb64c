"""A serializer written the way ``channels_valkey`` 0.x documents, used by both layers.

Its documentation: subclass ``BaseMessageSerializer``, register the class under a format name
with ``registry.register_serializer``, and when overriding ``serialize``/``deserialize`` call
``self.crypter.encrypt``/``self.crypter.decrypt`` (``crypter`` is ``None`` without keys).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.fernet import Fernet

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from channels_valkey.serializers import registry
from support.compat_serializer import OwnCryptoJSON
from support.servers import ValkeyServer

RECEIVE_TIMEOUT = 10
KEYS = {"plain": None, "encrypted": ["secret"]}


@pytest.fixture
def own_format(monkeypatch: pytest.MonkeyPatch) -> str:
    """``OwnCryptoJSON`` registered in the registry the layers use, for this test only."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    registry.register_serializer("own-json", OwnCryptoJSON)
    return "own-json"


def fernet_for(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode("utf-8")).digest()))


async def receive(layer: Any, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)


@pytest.mark.parametrize("keys", KEYS.values(), ids=KEYS.keys())
async def test_core_layer_sends_with_a_serializer_written_the_old_way(
    valkey_server: ValkeyServer, own_format: str, keys: list[str] | None
) -> None:
    valkey_server.flushall()
    admin = valkey_server.client()
    layer = ValkeyChannelLayer(
        hosts=[valkey_server.url], serializer_format=own_format, symmetric_encryption_keys=keys
    )
    await layer.send("own.inbox", {"type": "m", "text": "héllo"})
    # What the server holds is the serializer's own output: no random prefix, the JSON
    # encrypted with the first key when keys are set.
    [key] = [k for k in admin.keys("*") if k.endswith(b"own.inbox")]
    [stored] = admin.zrange(key, 0, -1)
    if keys:
        stored = fernet_for("secret").decrypt(stored)
    assert json.loads(stored) == {"type": "m", "text": "héllo"}
    assert await receive(layer, "own.inbox") == {"type": "m", "text": "héllo"}

    members = [await layer.new_channel() for _ in range(2)]
    for member in members:
        await layer.group_add("room", member)
    await layer.group_send("room", {"type": "g", "n": 1})
    for member in members:
        assert await receive(layer, member) == {"type": "g", "n": 1}
    await layer.flush()
    await layer.close()


@pytest.mark.parametrize("keys", KEYS.values(), ids=KEYS.keys())
async def test_pubsub_layer_sends_with_a_serializer_written_the_old_way(
    valkey_server: ValkeyServer, own_format: str, keys: list[str] | None
) -> None:
    layer = ValkeyPubSubChannelLayer(
        hosts=[valkey_server.url], serializer_format=own_format, symmetric_encryption_keys=keys
    )
    listener = valkey_server.client().pubsub()
    listener.subscribe("own.news")
    try:
        confirmed = await asyncio.to_thread(listener.get_message, timeout=RECEIVE_TIMEOUT)
        assert confirmed is not None
        assert confirmed["type"] == "subscribe"
        await layer.send("own.news", {"type": "m", "text": "héllo"})
        published = await asyncio.to_thread(listener.get_message, timeout=RECEIVE_TIMEOUT)
    finally:
        listener.close()
    # What was published is the serializer's own output, encrypted when keys are set.
    assert published is not None
    data = published["data"]
    if keys:
        data = fernet_for("secret").decrypt(data)
    assert json.loads(data) == {"type": "m", "text": "héllo"}

    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m", "text": "héllo"})
    assert await receive(layer, channel) == {"type": "m", "text": "héllo"}
    await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "g", "n": 1})
    assert await receive(layer, channel) == {"type": "g", "n": 1}
    await layer.close()
