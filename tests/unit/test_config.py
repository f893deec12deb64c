"""Unit tests for the layer's options, checked when ``ValkeyChannelLayer`` is built.

Nothing here needs a server: construction validates every option and opens no connection.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any

import msgpack
import pytest
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import ConfigurationError, SerializerDoesNotExist
from channels_valkey.serializers import JSONSerializer, MsgPackSerializer

#: Nothing listens on port 1: a layer that tried to connect at construction would fail.
DEAD = "valkey://127.0.0.1:1"


def layer(**options: Any) -> ValkeyChannelLayer:
    options.setdefault("hosts", [DEAD])
    return ValkeyChannelLayer(**options)


# --- defaults -------------------------------------------------------------------------------


def test_defaults_equal_channels_redis() -> None:
    ours = ValkeyChannelLayer()
    theirs = RedisChannelLayer()
    for option in ("prefix", "expiry", "group_expiry", "capacity", "ring_size"):
        assert getattr(ours, option) == getattr(theirs, option), option
    assert ours.prefix == "asgi"
    assert ours.expiry == 60
    assert ours.group_expiry == 86400
    assert ours.capacity == 100
    assert ours.ring_size == 1


def test_default_serializer_is_msgpack_with_a_12_byte_prefix_like_channels_redis() -> None:
    ours = ValkeyChannelLayer()
    theirs = RedisChannelLayer()
    assert ours.config.random_prefix_length == 12
    assert theirs._serializer.random_prefix_length == 12
    assert isinstance(ours._serializer, MsgPackSerializer)
    # The same bytes layout: a channels_redis process reads what we write, and back.
    message = {"type": "chat.message", "text": "hi", "n": 3}
    assert theirs.deserialize(ours._serializer.serialize(message)) == message
    assert ours._serializer.deserialize(theirs.serialize(message)) == message
    assert len(ours._serializer.serialize({})) == len(theirs.serialize({}))


def test_default_host_is_local_valkey() -> None:
    assert "hosts=[valkey://localhost:6379]" in repr(ValkeyChannelLayer())


def test_default_capacity_applies_to_every_channel() -> None:
    plain = ValkeyChannelLayer()
    assert plain.get_capacity("anything") == 100
    assert plain.get_capacity("specific.abc!def") == 100


def test_json_serializer_can_be_chosen() -> None:
    assert isinstance(layer(serializer_format="json")._serializer, JSONSerializer)


def test_options_are_exposed_under_channels_redis_names() -> None:
    custom = layer(prefix="myapp", expiry=5, group_expiry=30, capacity=7)
    assert (custom.prefix, custom.expiry, custom.group_expiry, custom.capacity) == (
        "myapp",
        5,
        30,
        7,
    )


def test_empty_prefix_is_allowed() -> None:
    assert layer(prefix="").prefix == ""


def test_random_prefix_length_zero_is_allowed() -> None:
    message = {"type": "x"}
    assert len(layer(random_prefix_length=0)._serializer.serialize(message)) + 12 == len(
        layer()._serializer.serialize(message)
    )


# --- channel_capacity -----------------------------------------------------------------------


def test_channel_capacity_globs() -> None:
    custom = layer(channel_capacity={"http.request": 200, "websocket.*": 20, "chat?": 3})
    assert custom.get_capacity("http.request") == 200
    assert custom.get_capacity("http.request2") == 100
    assert custom.get_capacity("websocket.send") == 20
    assert custom.get_capacity("websocket.") == 20
    assert custom.get_capacity("chat1") == 3
    assert custom.get_capacity("chat12") == 100
    assert custom.get_capacity("other") == 100


def test_channel_capacity_glob_matches_the_whole_name() -> None:
    custom = layer(channel_capacity={"chat": 3})
    assert custom.get_capacity("chat") == 3
    assert custom.get_capacity("chatroom") == 100
    assert custom.get_capacity("xchat") == 100


def test_channel_capacity_compiled_regex_matches_from_the_start() -> None:
    custom = layer(channel_capacity={re.compile(r"^specific\..*!"): 1000, re.compile("ws"): 9})
    assert custom.get_capacity("specific.abc!def") == 1000
    assert custom.get_capacity("specific.abc") == 100
    # re.Pattern.match anchors at the start only, as channels_redis does.
    assert custom.get_capacity("ws-anything") == 9
    assert custom.get_capacity("my-ws") == 100


def test_channel_capacity_first_match_wins_in_dict_order() -> None:
    first = layer(channel_capacity={"chat.*": 1, "chat.room.*": 2, "*": 3})
    assert first.get_capacity("chat.room.1") == 1
    assert first.get_capacity("else") == 3
    second = layer(channel_capacity=OrderedDict([("chat.room.*", 2), ("chat.*", 1)]))
    assert second.get_capacity("chat.room.1") == 2
    assert second.get_capacity("chat.lobby") == 1


def test_channel_capacity_agrees_with_channels_redis() -> None:
    rules: dict[Any, int] = {"http.*": 5, re.compile(r"ws\d"): 6, "*.local": 7}
    ours = layer(channel_capacity=rules)
    theirs = RedisChannelLayer(channel_capacity=rules)
    for name in ["http.x", "ws1", "wsx", "a.local", "http.local", "plain", "ws9.local"]:
        assert ours.get_capacity(name) == theirs.get_capacity(name), name


def test_channel_capacity_none_and_empty_mean_default() -> None:
    assert layer(channel_capacity=None).get_capacity("x") == 100
    assert layer(channel_capacity={}, capacity=4).get_capacity("x") == 4


def test_channel_capacity_is_read_once() -> None:
    rules = {"chat.*": 2}
    custom = layer(channel_capacity=rules)
    rules["chat.*"] = 50
    rules["other"] = 1
    assert custom.get_capacity("chat.x") == 2
    assert custom.get_capacity("other") == 100


# --- refused options ------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["capacity", "expiry", "group_expiry"])
@pytest.mark.parametrize("value", [0, -1, 1.5, 60.0, True, False, "60", None])
def test_counts_and_seconds_must_be_whole_numbers_from_one(option: str, value: Any) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"^{option} must be a whole number >= 1, got {re.escape(repr(value))}$",
    ):
        layer(**{option: value})


@pytest.mark.parametrize("option", ["capacity", "expiry", "group_expiry"])
def test_one_is_the_smallest_count(option: str) -> None:
    assert getattr(layer(**{option: 1}), option) == 1


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10", None])
def test_channel_capacity_values(value: Any) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"^channel_capacity\['chat\.\*'\] must be a whole number >= 1, got ",
    ):
        layer(channel_capacity={"other": 5, "chat.*": value})


def test_channel_capacity_value_error_names_a_regex_key() -> None:
    with pytest.raises(ConfigurationError, match=r"channel_capacity\[re\.compile\('ws'\)\]"):
        layer(channel_capacity={re.compile("ws"): 0})


@pytest.mark.parametrize("value", [[("chat.*", 5)], 5, "chat.*", (("a", 1),)])
def test_channel_capacity_must_be_a_dict(value: Any) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"^channel_capacity must be a dict of \{channel glob or compiled regex: capacity\}",
    ):
        layer(channel_capacity=value)


@pytest.mark.parametrize("key", [5, b"chat.*", ("chat",)])
def test_channel_capacity_keys_must_be_globs_or_regexes(key: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"channel_capacity keys must be glob strings or compiled regexes"
    ):
        layer(channel_capacity={key: 5})


@pytest.mark.parametrize("prefix", [None, b"asgi", 5, ["asgi"]])
def test_prefix_must_be_a_str(prefix: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^prefix must be a str, got "):
        layer(prefix=prefix)


def test_max_message_size_is_off_by_default_like_channels_redis() -> None:
    assert layer().config.max_message_size is None
    assert layer(max_message_size=1).config.max_message_size == 1
    assert layer(max_message_size=256 * 1024).config.max_message_size == 256 * 1024


@pytest.mark.parametrize("value", [0, -1, 1.5, 1024.0, True, "1MB", [1]])
def test_max_message_size_is_a_number_of_bytes(value: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"^max_message_size must be a number of bytes >= 1, or None"
    ):
        layer(max_message_size=value)


@pytest.mark.parametrize("value", [-1, 1.0, True, "12", None])
def test_random_prefix_length(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^random_prefix_length must be a whole number"):
        layer(random_prefix_length=value)


def test_unknown_serializer_format() -> None:
    with pytest.raises(SerializerDoesNotExist, match=r"no serializer registered for format 'cbor'"):
        layer(serializer_format="cbor")


def test_unknown_serializer_format_is_also_a_key_error_and_a_configuration_error() -> None:
    with pytest.raises(KeyError) as info:
        layer(serializer_format="cbor")
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("keys", ["abc", b"abc"])
def test_symmetric_encryption_keys_must_be_a_list(keys: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"^symmetric_encryption_keys must be a list of keys"
    ):
        layer(symmetric_encryption_keys=keys)


def test_symmetric_encryption_keys_list_is_accepted() -> None:
    secret = layer(symmetric_encryption_keys=["abc"])
    payload = secret._serializer.serialize({"type": "x"})
    assert msgpack.packb({"type": "x"}) not in payload
    assert secret._serializer.deserialize(payload) == {"type": "x"}


def test_configuration_errors_are_value_errors_like_channels_redis() -> None:
    with pytest.raises(ValueError, match="capacity"):
        layer(capacity=0)


def test_bad_hosts_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match=r"hosts must be a list of hosts"):
        ValkeyChannelLayer(hosts="valkey://localhost:6379")


@pytest.mark.parametrize(
    "host",
    [
        {"address": "valkey://localhost", "no_such_option": 1},
        {"host": "localhost", "port": 6379, "no_such_option": 1},
        {"path": "/run/valkey.sock", "no_such_option": 1},
        {"sentinels": [("localhost", 26379)], "master_name": "m", "no_such_option": 1},
        {
            "sentinels": [("localhost", 26379)],
            "master_name": "m",
            "sentinel_kwargs": {"no_such_option": 1},
        },
        "unix:///run/valkey.sock?no_such_option=1",
    ],
)
def test_unknown_connection_option_fails_at_construction(host: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"bad connection option: .*no_such_option"):
        ValkeyChannelLayer(hosts=[host])


def test_bad_connection_option_value_in_url_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError, match=r"bad connection option"):
        ValkeyChannelLayer(hosts=["valkey://localhost?socket_timeout=abc"])


def test_connection_option_error_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        ValkeyChannelLayer(hosts=[{"address": "valkey://u:hunter2@localhost", "no_such": 1}])
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "host",
    [
        {"address": "valkey://localhost", "health_check_interval": -1},
        {"address": "valkey://localhost", "health_check_interval": "30"},
        {"sentinels": [("localhost", 26379)], "master_name": "m", "health_check_interval": None},
        {"cluster": True, "startup_nodes": [("localhost", 7000)], "health_check_interval": -5},
    ],
)
def test_bad_health_check_interval_fails_at_construction(host: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"health_check_interval must be a number"):
        ValkeyChannelLayer(hosts=[host])


def test_known_connection_options_are_accepted() -> None:
    custom = ValkeyChannelLayer(
        hosts=[
            {"address": DEAD, "socket_timeout": 3, "health_check_interval": 10},
            {"host": "127.0.0.1", "port": 1, "password": "pw", "db": 2},
        ]
    )
    assert custom.ring_size == 2


@pytest.mark.parametrize(
    "host",
    [
        {"address": "valkey://localhost", "decode_responses": True},
        {"host": "localhost", "decode_responses": True},
        {"sentinels": [("localhost", 26379)], "master_name": "m", "decode_responses": True},
    ],
)
def test_decode_responses_is_refused(host: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"decode_responses must stay off"):
        ValkeyChannelLayer(hosts=[host])


def test_decode_responses_in_the_url_is_refused() -> None:
    # valkey-py's from_url lets URL query options override keyword arguments, so this would
    # turn decoding on for every connection of the pool and break binary payloads.
    with pytest.raises(ConfigurationError, match=r"decode_responses"):
        ValkeyChannelLayer(hosts=["valkey://localhost:6379?decode_responses=True"])


def test_decode_responses_false_is_accepted() -> None:
    ValkeyChannelLayer(hosts=[{"address": DEAD, "decode_responses": False}])


# --- construction opens no connection -------------------------------------------------------


def test_construction_does_not_connect() -> None:
    started = time.perf_counter()
    dead = ValkeyChannelLayer(
        hosts=[
            DEAD,
            ("127.0.0.1", 1),
            {"host": "127.0.0.1", "port": 1},
            "unix:///nonexistent/valkey.sock",
            {"sentinels": [("127.0.0.1", 1)], "master_name": "m"},
        ]
    )
    assert time.perf_counter() - started < 0.5
    assert dead.ring_size == 5
    assert dead.get_capacity("x") == 100


def test_repr_names_the_prefix_and_every_host_without_passwords() -> None:
    text = repr(ValkeyChannelLayer(hosts=["valkey://:hunter2@a:6379", ("b", 6380)], prefix="app"))
    assert text == "<ValkeyChannelLayer prefix='app' hosts=[valkey://:***@a:6379, b:6380]>"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait_for_replicas": -1}, "wait_for_replicas must be a whole number >= 0"),
        ({"wait_for_replicas": 1.5}, "wait_for_replicas must be a whole number >= 0"),
        ({"replica_timeout": 0}, "replica_timeout must be a number of seconds > 0"),
        ({"replica_timeout": "1"}, "replica_timeout must be a number of seconds > 0"),
    ],
)
def test_replica_wait_options_are_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ValkeyChannelLayer(**options)  # type: ignore[arg-type]


def test_prefix_with_braces_is_refused_on_a_cluster() -> None:
    with pytest.raises(ConfigurationError, match="prefix may not contain"):
        ValkeyChannelLayer(
            hosts=[{"cluster": True, "startup_nodes": [("127.0.0.1", 1)]}], prefix="a{b}"
        )
