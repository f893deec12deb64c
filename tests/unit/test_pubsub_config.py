"""The pub/sub layer's options and input checks: errors that need no server."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from channels_valkey.exceptions import (
    ConfigurationError,
    SerializationError,
    SerializerDoesNotExist,
)
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

# Nothing listens here: the checks below must fail before any connection is tried.
NOWHERE = ["valkey://127.0.0.1:1"]


def layer(**options: Any) -> ValkeyPubSubChannelLayer:
    return ValkeyPubSubChannelLayer(hosts=NOWHERE, **options)


def test_defaults() -> None:
    default = ValkeyPubSubChannelLayer()
    assert default.prefix == "asgi"
    assert default.capacity == 100
    assert default.ring_size == 1
    assert default.config.on_disconnect is None
    assert default.config.on_reconnect is None
    overflow = default.config.overflow
    assert overflow.stall_timeout == 10.0
    assert (overflow.channel_bytes, overflow.total_bytes) == (4 * 1024**2, 64 * 1024**2)
    assert default.extensions == ["groups", "flush"]
    assert default.config.max_message_size is None
    assert "localhost:6379" in repr(default)


def test_max_message_size_is_taken() -> None:
    assert layer(max_message_size=65536).config.max_message_size == 65536


def test_queue_bounds_are_taken() -> None:
    configured = layer(stall_timeout=0, channel_buffer_bytes=1000, total_buffer_bytes=1000)
    assert configured.config.overflow.stall_timeout == 0.0
    assert configured.config.overflow.channel_bytes == 1000
    assert configured.config.overflow.total_bytes == 1000
    assert layer(stall_timeout=2.5).config.overflow.stall_timeout == 2.5


def test_hooks_are_message_types() -> None:
    configured = layer(on_disconnect="valkey.disconnect", on_reconnect="valkey.reconnect")
    assert configured.config.on_disconnect == "valkey.disconnect"
    assert configured.config.on_reconnect == "valkey.reconnect"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"capacity": 0}, "capacity must be a whole number >= 1"),
        ({"capacity": "100"}, "capacity must be a whole number >= 1"),
        ({"stall_timeout": -1}, "stall_timeout must be a number of seconds >= 0"),
        ({"stall_timeout": "10"}, "stall_timeout must be a number of seconds >= 0"),
        ({"stall_timeout": True}, "stall_timeout must be a number of seconds >= 0"),
        ({"stall_timeout": float("nan")}, "stall_timeout must be a number of seconds >= 0"),
        ({"stall_timeout": float("inf")}, "stall_timeout must be a number of seconds >= 0"),
        ({"channel_buffer_bytes": 0}, "channel_buffer_bytes must be a whole number >= 1"),
        ({"channel_buffer_bytes": 1.5}, "channel_buffer_bytes must be a whole number >= 1"),
        ({"total_buffer_bytes": None}, "total_buffer_bytes must be a whole number >= 1"),
        (
            {"channel_buffer_bytes": 2000, "total_buffer_bytes": 1000},
            r"total_buffer_bytes \(1000\) must be >= channel_buffer_bytes \(2000\)",
        ),
        ({"prefix": b"asgi"}, "prefix must be a str"),
        ({"on_disconnect": True}, "on_disconnect must be a message type"),
        ({"on_reconnect": ""}, "on_reconnect must be a message type"),
        ({"hosts": "valkey://localhost"}, "wrap it in a list"),
        ({"hosts": [42]}, r"hosts\[0\] must be"),
        ({"hosts": ["http://localhost"]}, "URL scheme"),
        ({"hosts": [{"host": "localhost", "no_such_option": 1}]}, "bad connection option"),
        ({"serializer_format": "yaml"}, "no serializer registered for format 'yaml'"),
        ({"symmetric_encryption_keys": "secret"}, "must be a list of keys"),
        ({"max_message_size": 0}, "max_message_size must be a number of bytes >= 1, or None"),
        ({"max_message_size": 1.5}, "max_message_size must be a number of bytes >= 1, or None"),
        ({"max_message_size": "1MB"}, "max_message_size must be a number of bytes >= 1"),
        ({"max_message_size": False}, "max_message_size must be a number of bytes >= 1"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], match: str) -> None:
    options.setdefault("hosts", NOWHERE)
    with pytest.raises(ConfigurationError, match=match):
        ValkeyPubSubChannelLayer(**options)


def test_unknown_serializer_is_also_a_key_error() -> None:
    with pytest.raises(KeyError):
        layer(serializer_format="yaml")
    with pytest.raises(SerializerDoesNotExist):
        layer(serializer_format="yaml")


def test_storage_options_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigurationError) as raised:
        layer(expiry=60, group_expiry=3600)
    message = str(raised.value)
    assert "expiry, group_expiry" in message
    assert "stores no messages" in message
    assert "ValkeyChannelLayer" in message


def test_unknown_options_are_named() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\): hots.*Accepted options"):
        layer(hots=["valkey://localhost"])
    with pytest.raises(ConfigurationError, match=r"Accepted options: .*max_message_size"):
        layer(max_msg_size=1000)


@pytest.mark.parametrize("name", ["", "bad name", "x" * 200, b"bytes", None, "a!b!c"])
async def test_bad_channel_names_raise_type_error(name: Any) -> None:
    checked = layer()
    with pytest.raises(TypeError):
        await checked.send(name, {"type": "m"})
    with pytest.raises(TypeError):
        await checked.receive(name)
    with pytest.raises(TypeError):
        await checked.group_add("group", name)
    with pytest.raises(TypeError):
        await checked.group_discard("group", name)


@pytest.mark.parametrize("name", ["", "bad name", "x" * 200, b"bytes", "a!b"])
async def test_bad_group_names_raise_type_error(name: Any) -> None:
    checked = layer()
    with pytest.raises(TypeError):
        await checked.group_send(name, {"type": "m"})
    with pytest.raises(TypeError):
        await checked.group_add(name, "channel")
    with pytest.raises(TypeError):
        await checked.group_discard(name, "channel")


@pytest.mark.parametrize("message", [None, "text", ["type", "m"], 42])
async def test_non_dict_messages_raise_type_error(message: Any) -> None:
    checked = layer()
    with pytest.raises(TypeError, match="must be a dict"):
        await checked.send("channel", message)
    with pytest.raises(TypeError, match="must be a dict"):
        await checked.group_send("group", message)


async def test_the_reserved_key_is_refused() -> None:
    checked = layer()
    with pytest.raises(ValueError, match="__asgi_channel__"):
        await checked.send("channel", {"type": "m", "__asgi_channel__": "x"})
    with pytest.raises(ValueError, match="__asgi_channel__"):
        await checked.group_send("group", {"type": "m", "__asgi_channel__": "x"})


@pytest.mark.parametrize("serializer_format", ["msgpack", "json"])
async def test_unserializable_values_raise_serialization_error(serializer_format: str) -> None:
    checked = layer(serializer_format=serializer_format)
    with pytest.raises(SerializationError):
        await checked.send("channel", {"type": "m", "when": datetime.datetime.now()})
    with pytest.raises(SerializationError):
        await checked.group_send("group", {"type": "m", "when": datetime.datetime.now()})


def test_a_cluster_entry_is_taken_alone() -> None:
    cluster = {"cluster": True, "startup_nodes": [("127.0.0.1", 1), ("127.0.0.1", 2)]}
    on_cluster = ValkeyPubSubChannelLayer(hosts=[cluster])
    assert on_cluster.config.on_cluster
    assert "cluster://127.0.0.1:1,127.0.0.1:2" in repr(on_cluster)
    assert not layer().config.on_cluster
    with pytest.raises(ConfigurationError, match="must be the only entry"):
        ValkeyPubSubChannelLayer(hosts=[cluster, "valkey://127.0.0.1:1"])
    with pytest.raises(ConfigurationError, match="bad connection option"):
        ValkeyPubSubChannelLayer(hosts=[{**cluster, "no_such_option": 1}])
