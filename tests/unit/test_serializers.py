"""Unit tests for channels_valkey.serializers: no server involved."""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib.util
import json
import sys
import time
from typing import Any

import msgpack
import pytest
from cryptography.fernet import Fernet, InvalidToken

from channels_valkey import serializers
from channels_valkey.exceptions import (
    ConfigurationError,
    SerializationError,
    SerializerDoesNotExist,
)
from channels_valkey.serializers import (
    BaseMessageSerializer,
    JSONSerializer,
    MsgPackSerializer,
    SerializerRegistry,
    registry,
)

FORMATS = ["msgpack", "json"]

# Values every format can carry; msgpack also carries bytes.
COMMON_MESSAGE: dict[str, Any] = {
    "type": "chat.message",
    "text": "héllo wörld ✓",
    "count": 42,
    "ratio": 0.25,
    "flag": True,
    "nothing": None,
    "items": [1, "two", [3.5, {"four": 4}]],
    "nested": {"a": {"b": {"c": "deep"}}},
    "__asgi_channel__": "specific.abc!def",
}


def message_for(format: str) -> dict[str, Any]:
    if format == "msgpack":
        return {**COMMON_MESSAGE, "blob": b"\x00\xffbinary"}
    return dict(COMMON_MESSAGE)


def fernet_for(key: str | bytes) -> Fernet:
    """The key derivation the wire format defines, written out independently."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))


# --- round trips and wire layout ------------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("keys", [None, ["secret"]], ids=["plain", "encrypted"])
@pytest.mark.parametrize("prefix", [0, 12])
def test_round_trip(format: str, keys: list[str] | None, prefix: int) -> None:
    serializer = registry.get_serializer(
        format, symmetric_encryption_keys=keys, random_prefix_length=prefix, expiry=60
    )
    message = message_for(format)
    assert serializer.deserialize(serializer.serialize(message)) == message


def test_registry_builds_the_builtin_classes() -> None:
    assert isinstance(registry.get_serializer("msgpack"), MsgPackSerializer)
    assert isinstance(registry.get_serializer("json"), JSONSerializer)


@pytest.mark.parametrize(
    ("format", "encode"),
    [("msgpack", msgpack.packb), ("json", lambda m: json.dumps(m).encode("utf-8"))],
)
def test_plain_payload_is_the_bare_encoding(format: str, encode: Any) -> None:
    message = message_for(format)
    assert registry.get_serializer(format).serialize(message) == encode(message)
    prefixed = registry.get_serializer(format, random_prefix_length=7).serialize(message)
    assert prefixed[7:] == encode(message)


def test_random_prefix_has_the_length_and_differs() -> None:
    serializer = MsgPackSerializer(random_prefix_length=12)
    message = {"type": "x"}
    first, second = serializer.serialize(message), serializer.serialize(message)
    payload = msgpack.packb(message)
    assert len(first) == len(second) == 12 + len(payload)
    assert first[12:] == second[12:] == payload
    # Equal only with probability 2**-96.
    assert first[:12] != second[:12]


def test_options_are_readable() -> None:
    serializer = JSONSerializer(random_prefix_length=3, expiry=60)
    assert serializer.random_prefix_length == 3
    assert serializer.expiry == 60
    assert MsgPackSerializer().random_prefix_length == 0
    assert MsgPackSerializer().expiry is None


@pytest.mark.parametrize("keys", [None, []], ids=["none", "empty-list"])
def test_no_keys_means_no_encryption(keys: list[str] | None) -> None:
    message = {"type": "x"}
    assert MsgPackSerializer(symmetric_encryption_keys=keys).serialize(message) == (
        msgpack.packb(message)
    )


# --- encryption -----------------------------------------------------------------------------


def test_encrypted_payload_is_a_fernet_token_of_the_derived_key() -> None:
    message = {"type": "x", "n": 1}
    data = MsgPackSerializer(symmetric_encryption_keys=["secret"], random_prefix_length=5)
    token = data.serialize(message)[5:]
    assert fernet_for("secret").decrypt(token) == msgpack.packb(message)


def test_str_and_bytes_keys_are_equivalent() -> None:
    message = {"type": "x"}
    token = MsgPackSerializer(symmetric_encryption_keys=["clé"]).serialize(message)
    reader = MsgPackSerializer(symmetric_encryption_keys=["clé".encode()])
    assert reader.deserialize(token) == message


def test_key_rotation() -> None:
    message = {"type": "rotate"}
    old = MsgPackSerializer(symmetric_encryption_keys=["A"])
    rotated = MsgPackSerializer(symmetric_encryption_keys=["B", "A"])
    only_new = MsgPackSerializer(symmetric_encryption_keys=["B"])

    # Every key decrypts: a message written with [A] is read by [B, A].
    assert rotated.deserialize(old.serialize(message)) == message
    # The first key encrypts: [B, A] writes with B, which [A] cannot read but [B] can.
    token = rotated.serialize(message)
    assert only_new.deserialize(token) == message
    with pytest.raises(InvalidToken):
        old.deserialize(token)


def test_wrong_key_raises_invalid_token() -> None:
    token = JSONSerializer(symmetric_encryption_keys=["right"]).serialize({"type": "x"})
    with pytest.raises(InvalidToken):
        JSONSerializer(symmetric_encryption_keys=["wrong"]).deserialize(token)


def test_plain_data_given_to_an_encrypting_serializer_is_rejected() -> None:
    plain = MsgPackSerializer().serialize({"type": "x"})
    with pytest.raises(InvalidToken):
        MsgPackSerializer(symmetric_encryption_keys=["k"]).deserialize(plain)


def _token_aged(seconds: int, prefix: int = 0) -> bytes:
    payload = msgpack.packb({"type": "aged"})
    token = fernet_for("k").encrypt_at_time(payload, int(time.time()) - seconds)
    return b"p" * prefix + token


def test_token_older_than_expiry_plus_slack_is_rejected() -> None:
    serializer = MsgPackSerializer(
        symmetric_encryption_keys=["k"], random_prefix_length=4, expiry=60
    )
    with pytest.raises(InvalidToken):
        serializer.deserialize(_token_aged(1000, prefix=4))


def test_token_within_expiry_plus_slack_is_accepted() -> None:
    # ttl is expiry + 10 seconds: 65 seconds old is still fine with expiry=60.
    serializer = MsgPackSerializer(symmetric_encryption_keys=["k"], expiry=60)
    assert serializer.deserialize(_token_aged(65)) == {"type": "aged"}


def test_tokens_never_expire_without_expiry() -> None:
    serializer = MsgPackSerializer(symmetric_encryption_keys=["k"])
    assert serializer.deserialize(_token_aged(10**6)) == {"type": "aged"}


# --- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "kind"), [("secret", "str"), (b"secret", "bytes")], ids=["str", "bytes"]
)
def test_single_key_instead_of_list(keys: Any, kind: str) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"symmetric_encryption_keys must be a list of keys, not a single {kind}; "
        r"wrap it: \[key\]",
    ):
        MsgPackSerializer(symmetric_encryption_keys=keys)


def test_unordered_keys_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be a list of keys, not set"):
        MsgPackSerializer(symmetric_encryption_keys={"a", "b"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (["good", ""], r"symmetric_encryption_keys\[1\] is empty"),
        ([b""], r"symmetric_encryption_keys\[0\] is empty"),
        (["good", "fine", 42], r"symmetric_encryption_keys\[2\] must be a str or bytes, not int"),
        ([None], r"symmetric_encryption_keys\[0\] must be a str or bytes, not NoneType"),
    ],
)
def test_bad_key_entries_are_named_by_index(keys: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        JSONSerializer(symmetric_encryption_keys=keys)


@pytest.mark.parametrize("value", [-1, "12", 1.5, True, None])
def test_bad_random_prefix_length(value: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"random_prefix_length must be a non-negative int, not "
    ):
        MsgPackSerializer(random_prefix_length=value)


def test_configuration_errors_are_value_errors() -> None:
    # Code written for channels_redis catches ValueError for bad options.
    with pytest.raises(ValueError, match="list of keys"):
        MsgPackSerializer(symmetric_encryption_keys="secret")


def _block_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes ``import`` raise ImportError.
    monkeypatch.setitem(sys.modules, "cryptography", None)
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)


def test_keys_without_cryptography_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _block_cryptography(monkeypatch)
    with pytest.raises(
        ConfigurationError, match=r"pip install channels-valkey\[cryptography\]"
    ) as excinfo:
        MsgPackSerializer(symmetric_encryption_keys=["secret"])
    assert isinstance(excinfo.value.__cause__, ImportError)
    # Without keys, nothing needs cryptography.
    serializer = MsgPackSerializer(random_prefix_length=4)
    assert serializer.deserialize(serializer.serialize({"type": "x"})) == {"type": "x"}


def test_module_imports_without_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    _block_cryptography(monkeypatch)
    # Load a separate copy of the module so the shared one is left alone.
    assert serializers.__file__ is not None
    spec = importlib.util.spec_from_file_location("_serializers_copy", serializers.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    serializer = module.registry.get_serializer("json")
    assert serializer.deserialize(serializer.serialize({"type": "x"})) == {"type": "x"}
    with pytest.raises(ConfigurationError, match=r"channels-valkey\[cryptography\]"):
        module.registry.get_serializer("json", symmetric_encryption_keys=["k"])


# --- values a format cannot encode ----------------------------------------------------------

WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5)


class Opaque:
    pass


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize(
    ("message", "where", "kind"),
    [
        ({"payload": {"when": WHEN}}, r'message\["payload"\]\["when"\]', "datetime"),
        ({"type": "x", "tags": {"a", "b"}}, r'message\["tags"\]', "set"),
        ({"items": [1, {"obj": Opaque()}]}, r'message\["items"\]\[1\]\["obj"\]', "Opaque"),
    ],
    ids=["datetime", "set", "object"],
)
def test_unencodable_value_is_named_by_path(
    format: str, message: dict[str, Any], where: str, kind: str
) -> None:
    with pytest.raises(
        SerializationError,
        match=rf"^{where}: {kind} is not serializable by the {format} serializer$",
    ) as excinfo:
        registry.get_serializer(format).serialize(message)
    # The encoder's own error is kept as the cause.
    assert excinfo.value.__cause__ is not None


def test_bytes_under_json() -> None:
    with pytest.raises(
        SerializationError,
        match=r'^message\["body"\]\["data"\]: bytes is not serializable by the json serializer$',
    ):
        JSONSerializer().serialize({"type": "x", "body": {"data": b"\x00"}})


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1])
def test_int_too_large_for_msgpack(number: int) -> None:
    with pytest.raises(
        SerializationError,
        match=rf'^message\["n"\]: int {number} is out of range .* by the msgpack serializer$',
    ):
        MsgPackSerializer().serialize({"type": "x", "n": number})
    # JSON has no such limit.
    assert JSONSerializer().serialize({"n": number}) == json.dumps({"n": number}).encode()


def test_unencodable_dict_key_under_json() -> None:
    with pytest.raises(
        SerializationError,
        match=r'^message\["m"\]: key \(1, 2\): tuple is not serializable by the json serializer$',
    ):
        JSONSerializer().serialize({"m": {(1, 2): "pair"}})


def test_invalid_unicode_under_msgpack_gives_the_reason() -> None:
    with pytest.raises(
        SerializationError,
        match=r'^message\["text"\]: str is not serializable \(.*surrogates not allowed\) '
        r"by the msgpack serializer$",
    ):
        MsgPackSerializer().serialize({"text": "\ud800"})


@pytest.mark.parametrize("format", FORMATS)
def test_circular_reference(format: str) -> None:
    inner: dict[str, Any] = {"x": 1}
    inner["again"] = [inner]
    with pytest.raises(
        SerializationError,
        match=rf'^message\["outer"\]\["again"\]\[0\]: circular reference .* {format} serializer$',
    ):
        registry.get_serializer(format).serialize({"outer": inner})


def test_shared_subobject_is_not_a_cycle() -> None:
    shared = {"when": WHEN}
    with pytest.raises(SerializationError, match=r'^message\["a"\]\["when"\]: datetime'):
        MsgPackSerializer().serialize({"a": shared, "b": shared})
    assert MsgPackSerializer().serialize({"a": [1], "b": [1]})


def test_serialization_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        MsgPackSerializer().serialize({"s": {1}})


def test_message_is_only_walked_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: Any) -> None:
        raise AssertionError("walked a message that encoded fine")

    monkeypatch.setattr(serializers, "_find_unencodable", must_not_run)
    for format in FORMATS:
        assert registry.get_serializer(format).serialize(dict(COMMON_MESSAGE))


# --- user serializers and the registry ------------------------------------------------------


class ReversedJSON(BaseMessageSerializer):
    """A user format: only as_bytes/from_bytes, the base class does the rest."""

    def as_bytes(self, message: dict[str, Any]) -> bytes:
        return json.dumps(message).encode()[::-1]

    def from_bytes(self, data: bytes) -> dict[str, Any]:
        return json.loads(data[::-1])  # type: ignore[no-any-return]


class DuckSerializer:
    """Not a BaseMessageSerializer: just serialize/deserialize and the usual keywords."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def serialize(self, message: dict[str, Any]) -> bytes:
        return repr(message).encode()

    def deserialize(self, data: bytes) -> dict[str, Any]:
        return eval(data.decode())  # type: ignore[no-any-return]


def test_custom_subclass_gets_prefix_and_encryption() -> None:
    own = SerializerRegistry()
    own.register_serializer("reversed", ReversedJSON)
    serializer = own.get_serializer(
        "reversed", symmetric_encryption_keys=["k"], random_prefix_length=6, expiry=60
    )
    assert isinstance(serializer, ReversedJSON)
    data = serializer.serialize({"type": "x"})
    assert fernet_for("k").decrypt(data[6:]) == b'}"x" :"epyt"{'
    assert serializer.deserialize(data) == {"type": "x"}


def test_duck_typed_class_is_built_with_the_keywords() -> None:
    own = SerializerRegistry()
    own.register_serializer("duck", DuckSerializer)
    serializer = own.get_serializer(
        "duck", symmetric_encryption_keys=None, random_prefix_length=0, expiry=30
    )
    assert isinstance(serializer, DuckSerializer)
    assert serializer.kwargs == {
        "symmetric_encryption_keys": None,
        "random_prefix_length": 0,
        "expiry": 30,
    }
    assert serializer.deserialize(serializer.serialize({"type": "x"})) == {"type": "x"}


def test_subclass_overriding_from_bytes_is_used() -> None:
    class Tagged(MsgPackSerializer):
        def from_bytes(self, data: bytes) -> dict[str, Any]:
            return {**super().from_bytes(data), "seen": True}

    serializer = Tagged(random_prefix_length=2)
    assert serializer.deserialize(serializer.serialize({"type": "x"})) == {
        "type": "x",
        "seen": True,
    }


def test_register_replaces_an_existing_format() -> None:
    own = SerializerRegistry()
    own.register_serializer("fmt", JSONSerializer)
    own.register_serializer("fmt", MsgPackSerializer)
    assert isinstance(own.get_serializer("fmt"), MsgPackSerializer)


class NoDeserialize:
    def serialize(self, message: dict[str, Any]) -> bytes:
        return b""


class NotASerializer:
    serialize = "not callable"


class Abstract(BaseMessageSerializer):
    def as_bytes(self, message: dict[str, Any]) -> bytes:
        return b""


@pytest.mark.parametrize(
    ("candidate", "match"),
    [
        (NoDeserialize, r"NoDeserialize has no deserialize method"),
        (NotASerializer, r"NotASerializer has no serialize or deserialize method"),
        (Abstract, r"Abstract does not implement: from_bytes"),
        (JSONSerializer(), r"must be a class, not an instance of JSONSerializer"),
        (dict, r"dict has no serialize or deserialize method"),
    ],
    ids=["no-deserialize", "neither", "abstract", "instance", "builtin"],
)
def test_register_rejects_what_cannot_serialize(candidate: Any, match: str) -> None:
    own = SerializerRegistry()
    with pytest.raises(TypeError, match=match):
        own.register_serializer("bad", candidate)
    with pytest.raises(SerializerDoesNotExist):
        own.get_serializer("bad")


def test_register_rejects_a_bad_format_name() -> None:
    with pytest.raises(TypeError, match="format must be a non-empty str"):
        SerializerRegistry().register_serializer("", JSONSerializer)


def test_unknown_format_lists_the_registered_ones() -> None:
    with pytest.raises(
        SerializerDoesNotExist,
        match=r"^no serializer registered for format 'cbor'; "
        r"registered formats: 'json', 'msgpack'$",
    ) as excinfo:
        registry.get_serializer("cbor")
    # Also what channels_redis raises (KeyError) and what bad options raise (ValueError).
    assert isinstance(excinfo.value, KeyError)
    assert isinstance(excinfo.value, ValueError)


def test_unknown_format_in_an_empty_registry() -> None:
    with pytest.raises(SerializerDoesNotExist, match="registered formats: none"):
        SerializerRegistry().get_serializer("msgpack")


# --- wire compatibility with channels_redis -------------------------------------------------

WIRE_CASES = [
    pytest.param(format, keys, prefix, id=f"{format}-{'enc' if keys else 'plain'}-{prefix}")
    for format in FORMATS
    for keys in (None, ["old-key", "new-key"])
    for prefix in (0, 12)
]


@pytest.fixture(scope="module")
def redis_registry() -> Any:
    return pytest.importorskip("channels_redis.serializers").registry


def _pair(redis_registry: Any, format: str, keys: Any, prefix: int) -> tuple[Any, Any]:
    options = {"symmetric_encryption_keys": keys, "random_prefix_length": prefix, "expiry": 60}
    return registry.get_serializer(format, **options), redis_registry.get_serializer(
        format, **options
    )


@pytest.mark.parametrize(("format", "keys", "prefix"), WIRE_CASES)
def test_channels_redis_reads_our_bytes(
    redis_registry: Any, format: str, keys: Any, prefix: int
) -> None:
    ours, theirs = _pair(redis_registry, format, keys, prefix)
    message = message_for(format)
    assert theirs.deserialize(ours.serialize(message)) == message


@pytest.mark.parametrize(("format", "keys", "prefix"), WIRE_CASES)
def test_we_read_channels_redis_bytes(
    redis_registry: Any, format: str, keys: Any, prefix: int
) -> None:
    ours, theirs = _pair(redis_registry, format, keys, prefix)
    message = message_for(format)
    data = theirs.serialize(message)
    assert ours.deserialize(data) == message
    if not keys:
        # Unencrypted, everything after the random prefix is byte for byte the same.
        assert ours.serialize(message)[prefix:] == data[prefix:]
