"""The serializer names that code written for ``channels_valkey`` 0.x or ``channels_redis`` 4.x
imports, and the ``crypter`` their documentation tells a serializer to use. No server involved
(tests/integration/test_compat_serializers.py runs such a serializer through the layers)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.fernet import Fernet, MultiFernet

from channels_valkey import exceptions, serializers
from channels_valkey.serializers import (
    BaseMessageSerializer,
    JSONSerializer,
    MsgPackSerializer,
    SerializerDoesNotExist,
    SerializerRegistry,
    SerializersRegistry,
    registry,
)
from support.compat_serializer import OwnCryptoJSON


def fernet_for(key: str | bytes) -> Fernet:
    """The key derivation of the wire format, written out independently."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))


def test_every_old_name_imports_from_the_serializers_module() -> None:
    names = [
        "SerializersRegistry",
        "SerializerDoesNotExist",
        "MsgPackSerializer",
        "JSONSerializer",
        "BaseMessageSerializer",
        "registry",
    ]
    assert [name for name in names if not hasattr(serializers, name)] == []
    assert set(names) <= set(serializers.__all__)


def test_serializers_registry_is_the_registry_class() -> None:
    assert SerializersRegistry is SerializerRegistry
    assert isinstance(registry, SerializersRegistry)
    own = SerializersRegistry()
    own.register_serializer("json", JSONSerializer)
    assert isinstance(own.get_serializer("json"), JSONSerializer)


def test_serializer_does_not_exist_is_the_one_raised_and_a_key_error() -> None:
    assert SerializerDoesNotExist is exceptions.SerializerDoesNotExist
    with pytest.raises(SerializerDoesNotExist):
        registry.get_serializer("no-such-format")
    with pytest.raises(KeyError):  # what code written for channels_redis catches
        registry.get_serializer("no-such-format")


def test_builtin_formats_are_the_old_classes() -> None:
    assert isinstance(registry.get_serializer("msgpack"), MsgPackSerializer)
    assert isinstance(registry.get_serializer("json"), JSONSerializer)
    assert issubclass(MsgPackSerializer, BaseMessageSerializer)
    assert issubclass(JSONSerializer, BaseMessageSerializer)


@pytest.mark.parametrize("keys", [None, []], ids=["none", "empty"])
@pytest.mark.parametrize("serializer_class", [MsgPackSerializer, JSONSerializer, OwnCryptoJSON])
def test_crypter_is_none_without_keys(
    serializer_class: type[BaseMessageSerializer], keys: list[str] | None
) -> None:
    assert serializer_class(symmetric_encryption_keys=keys).crypter is None


def test_crypter_encrypts_with_the_first_key_and_decrypts_with_any() -> None:
    serializer = JSONSerializer(symmetric_encryption_keys=["new", b"old"])
    assert isinstance(serializer.crypter, MultiFernet)
    token = serializer.crypter.encrypt(b"payload")
    assert fernet_for("new").decrypt(token) == b"payload"
    assert serializer.crypter.decrypt(fernet_for(b"old").encrypt(b"earlier")) == b"earlier"


def test_crypter_is_the_encryption_serialize_uses() -> None:
    serializer = JSONSerializer(symmetric_encryption_keys=["secret"])
    data = serializer.serialize({"type": "m"})
    assert serializer.crypter.decrypt(data) == b'{"type": "m"}'
    assert serializer.deserialize(serializer.crypter.encrypt(b'{"type": "n"}')) == {"type": "n"}


@pytest.mark.parametrize("keys", [None, ["secret"]], ids=["plain", "encrypted"])
def test_serializer_written_the_old_way_round_trips(keys: list[str] | None) -> None:
    own = SerializersRegistry()
    own.register_serializer("own", OwnCryptoJSON)
    serializer = own.get_serializer(
        "own", symmetric_encryption_keys=keys, random_prefix_length=0, expiry=60
    )
    message = {"type": "chat.message", "text": "héllo"}
    data = serializer.serialize(message)
    assert serializer.deserialize(data) == message
    # Its bytes are those of the built-in format with the same keys and no prefix.
    builtin = JSONSerializer(symmetric_encryption_keys=keys)
    assert builtin.deserialize(data) == message
    assert serializer.deserialize(builtin.serialize(message)) == message
    if keys:
        assert fernet_for("secret").decrypt(data) == json.dumps(message).encode()
    else:
        assert data == json.dumps(message).encode()


def test_make_fernet_derives_the_documented_key() -> None:
    fernet = JSONSerializer().make_fernet("secret")
    assert fernet_for("secret").decrypt(fernet.encrypt(b"x")) == b"x"
    assert fernet_for(b"raw").decrypt(JSONSerializer().make_fernet(b"raw").encrypt(b"y")) == b"y"


def test_an_overridden_make_fernet_builds_the_crypter() -> None:
    class FixedKey(JSONSerializer):
        """Ignores the configured keys' derivation: every key becomes the same Fernet key."""

        fixed = Fernet.generate_key()

        def make_fernet(self, key: str | bytes) -> Any:
            return Fernet(self.fixed)

    data = FixedKey(symmetric_encryption_keys=["anything"]).serialize({"type": "m"})
    assert Fernet(FixedKey.fixed).decrypt(data) == b'{"type": "m"}'


def test_get_serializer_passes_positional_arguments_on() -> None:
    serializer = registry.get_serializer("json", ["secret"], 4, 60)
    assert isinstance(serializer, JSONSerializer)
    assert serializer.random_prefix_length == 4
    assert serializer.expiry == 60
    assert fernet_for("secret").decrypt(serializer.serialize({"type": "m"})[4:])
