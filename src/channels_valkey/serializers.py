"""Turning channel-layer messages into bytes and back.

The byte format is shared with ``channels_redis`` 4.x: a process using this package and one
using ``channels_redis`` can talk over the same server as long as both use the same
``serializer_format``, ``symmetric_encryption_keys`` and ``random_prefix_length``. The layout is::

    random prefix (random_prefix_length bytes, none when 0)
    + payload                          # as_bytes(message)
      or Fernet token of the payload   # when symmetric_encryption_keys are given

Each user key (``str`` is UTF-8 encoded) becomes the Fernet key
``urlsafe_b64encode(sha256(key).digest())``; the first key encrypts and every key decrypts
(``MultiFernet``), which is how keys are rotated.

``serialize`` and ``deserialize`` run for every message, so they are kept to a few attribute
lookups; the expensive work of explaining a bad message happens only once encoding has failed.

Code written for ``channels_redis`` 4.x or for the older ``channels_valkey`` 0.x keeps working:
the names they import from this module exist here too (``SerializersRegistry`` is
``SerializerRegistry``, ``SerializerDoesNotExist`` is importable from here), and a serializer
that overrides ``serialize``/``deserialize`` finds the encryption where their documentation
says, in ``self.crypter``.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import inspect
import json
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgpack

from channels_valkey.exceptions import (
    ConfigurationError,
    SerializationError,
    SerializerDoesNotExist,
)

__all__ = [
    "BaseMessageSerializer",
    "JSONSerializer",
    "MessageSerializer",
    "MsgPackSerializer",
    "SerializerDoesNotExist",
    "SerializerRegistry",
    "SerializersRegistry",
    "registry",
]

# Bound once: a module global is a cheaper lookup than ``random.getrandbits`` per message.
# The prefix only makes equal messages differ (sorted-set members must be unique); it is not a
# secret, so the Mersenne Twister is fine. It is also about three times cheaper than
# ``os.urandom``, which costs a system call for every message.
_getrandbits = random.getrandbits
_packb = msgpack.packb
_unpackb = msgpack.unpackb
_json_dumps = json.dumps
_json_loads = json.loads

# Fernet accepts a token this long after its timestamp when ``expiry`` is set. The slack covers
# clock differences between the processes sharing a server; channels_redis uses the same value.
_TTL_SLACK_SECONDS = 10

_CRYPTOGRAPHY_MISSING = (
    "symmetric_encryption_keys need the 'cryptography' package, which is not installed; "
    "install it with: pip install channels-valkey[cryptography]"
)


class MessageSerializer(Protocol):
    """What the layers need from a serializer: any object with these two methods will do."""

    def serialize(self, message: dict[str, Any]) -> bytes: ...

    def deserialize(self, data: bytes) -> dict[str, Any]: ...


class BaseMessageSerializer(abc.ABC):
    """Adds the random prefix and optional encryption around a plain encoder.

    A new format only has to turn a message into bytes and back; everything else (prefix,
    encryption, key rotation, expiry) is done here so that it matches the other processes::

        import cbor2

        class CBORSerializer(BaseMessageSerializer):
            def as_bytes(self, message):
                return cbor2.dumps(message)

            def from_bytes(self, data):
                return cbor2.loads(data)

        registry.register_serializer("cbor", CBORSerializer)

    ``symmetric_encryption_keys``: a list of keys (``str`` or ``bytes``). The first encrypts,
    all of them decrypt, so rotate by putting the new key first and dropping the old one once
    every process has the new list. ``None`` or an empty list means no encryption.

    ``random_prefix_length``: how many random bytes to put before each message (0 for none).

    ``expiry``: the layer's message expiry in seconds. Encrypted messages older than
    ``expiry + 10`` seconds are rejected when read. It is validated by the layer, not here.

    ``crypter``: the ``cryptography`` ``MultiFernet`` built from the keys, or ``None`` without
    keys. A subclass that overrides ``serialize``/``deserialize`` itself encrypts with
    ``self.crypter.encrypt(data)`` and decrypts with ``self.crypter.decrypt(data)``, as the
    documentation of ``channels_redis`` and ``channels_valkey`` 0.x tells it to.
    """

    crypter: Any

    def __init__(
        self,
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        random_prefix_length: int = 0,
        expiry: int | None = None,
    ) -> None:
        # bool is an int, but ``True`` as a length is certainly a mistake.
        if (
            not isinstance(random_prefix_length, int)
            or isinstance(random_prefix_length, bool)
            or random_prefix_length < 0
        ):
            raise ConfigurationError(
                f"random_prefix_length must be a non-negative int, not {random_prefix_length!r}"
            )
        self._prefix_length = random_prefix_length
        self._expiry = expiry
        self._ttl = None if expiry is None else expiry + _TTL_SLACK_SECONDS
        self.crypter = _make_crypter(symmetric_encryption_keys, self.make_fernet)
        # Cached bound methods: saves building one per message.
        self._as_bytes: Callable[[dict[str, Any]], bytes] = self.as_bytes
        # A built-in format whose ``from_bytes`` no subclass overrode decodes with its library
        # function directly, one Python frame less per message.
        self._from_bytes: Callable[[bytes], dict[str, Any]] = _DIRECT_DECODERS.get(
            type(self).from_bytes, self.from_bytes
        )

    @property
    def random_prefix_length(self) -> int:
        """Number of random bytes before each serialized message."""
        return self._prefix_length

    @property
    def expiry(self) -> int | None:
        """The expiry this serializer was built with (``None``: tokens never expire)."""
        return self._expiry

    def make_fernet(self, key: str | bytes) -> Any:
        """The ``Fernet`` that one key of ``symmetric_encryption_keys`` stands for.

        ``crypter`` is made of these, one per key. The method exists, and is called for each
        key, because ``channels_redis`` and ``channels_valkey`` 0.x do so: a subclass written
        for them may override it or call it.
        """
        if isinstance(key, str):
            key = key.encode("utf-8")
        elif not isinstance(key, bytes):
            raise ConfigurationError(
                f"an encryption key must be a str or bytes, not {type(key).__name__}"
            )
        try:
            from cryptography.fernet import Fernet
        except ImportError as exc:
            raise ConfigurationError(_CRYPTOGRAPHY_MISSING) from exc
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key).digest()))

    @abc.abstractmethod
    def as_bytes(self, message: dict[str, Any]) -> bytes:
        """Encode a message with no prefix and no encryption."""

    @abc.abstractmethod
    def from_bytes(self, data: bytes) -> dict[str, Any]:
        """Decode what ``as_bytes`` produced."""

    def serialize(self, message: dict[str, Any]) -> bytes:
        """Return the bytes to store for ``message``.

        Raises ``SerializationError`` (built-in formats) when a value cannot be encoded.
        """
        payload = self._as_bytes(message)
        crypter = self.crypter
        if crypter is not None:
            payload = crypter.encrypt(payload)
        n = self._prefix_length
        if n:
            return _getrandbits(n << 3).to_bytes(n, "big") + payload
        return payload

    def deserialize(self, data: bytes) -> dict[str, Any]:
        """Return the message stored as ``data``.

        With encryption, data that no configured key can decrypt, or a token older than
        ``expiry + 10`` seconds, raises ``cryptography.fernet.InvalidToken`` (as
        ``channels_redis`` does); the layer logs and drops such a message.
        """
        n = self._prefix_length
        if n:
            data = data[n:]
        crypter = self.crypter
        if crypter is not None:
            data = crypter.decrypt(data, self._ttl)
        return self._from_bytes(data)


class MsgPackSerializer(BaseMessageSerializer):
    """MessagePack with msgpack's defaults (``use_bin_type=True``, ``raw=False``).

    Those defaults are what ``channels_redis`` uses, so they must not change. Note that on
    reading, map keys must be ``str`` or ``bytes`` (msgpack's ``strict_map_key``).
    """

    def as_bytes(self, message: dict[str, Any]) -> bytes:
        try:
            return _packb(message)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unserializable(message, exc, _packb, "msgpack") from exc

    def from_bytes(self, data: bytes) -> dict[str, Any]:
        return _unpackb(data)  # type: ignore[no-any-return]


class JSONSerializer(BaseMessageSerializer):
    """JSON, UTF-8 encoded; ``bytes`` values cannot be sent in this format."""

    def as_bytes(self, message: dict[str, Any]) -> bytes:
        try:
            return _json_dumps(message).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise _unserializable(message, exc, _json_dumps, "json") from exc

    def from_bytes(self, data: bytes) -> dict[str, Any]:
        return _json_loads(data)  # type: ignore[no-any-return]


#: Each built-in format's ``from_bytes``, and the library function it calls.
_DIRECT_DECODERS: dict[Callable[..., Any], Callable[[bytes], dict[str, Any]]] = {
    MsgPackSerializer.from_bytes: _unpackb,
    JSONSerializer.from_bytes: _json_loads,
}


class SerializerRegistry:
    """Maps a ``serializer_format`` name to the class that implements it."""

    def __init__(self) -> None:
        self._registry: dict[str, type] = {}

    def register_serializer(self, format: str, serializer_class: type) -> None:
        """Make ``serializer_class`` available as ``format`` (replacing any earlier one).

        It must be a concrete subclass of ``BaseMessageSerializer``, or any class with
        ``serialize(message)`` and ``deserialize(data)`` methods whose constructor accepts
        ``symmetric_encryption_keys``, ``random_prefix_length`` and ``expiry`` keywords.
        Checked here, so that a mistake shows when registering rather than on the first send.
        """
        if not isinstance(format, str) or not format:
            raise TypeError(f"serializer format must be a non-empty str, not {format!r}")
        if not isinstance(serializer_class, type):
            raise TypeError(
                f"serializer_class for {format!r} must be a class, "
                f"not an instance of {type(serializer_class).__name__}"
            )
        name = serializer_class.__qualname__
        if issubclass(serializer_class, BaseMessageSerializer):
            if inspect.isabstract(serializer_class):
                missing = ", ".join(sorted(serializer_class.__abstractmethods__))
                raise TypeError(f"serializer class {name} does not implement: {missing}")
        else:
            absent = [
                method
                for method in ("serialize", "deserialize")
                if not callable(getattr(serializer_class, method, None))
            ]
            if absent:
                raise TypeError(
                    f"serializer class {name} has no {' or '.join(absent)} method; "
                    "subclass channels_valkey.serializers.BaseMessageSerializer or define "
                    "both serialize(message) and deserialize(data)"
                )
        self._registry[format] = serializer_class

    def get_serializer(self, format: str, *args: Any, **kwargs: Any) -> MessageSerializer:
        """Build the serializer registered as ``format`` with the given arguments.

        The layers pass keywords only; positional ones are passed on because
        ``channels_redis``' registry allows them.
        """
        try:
            serializer_class = self._registry[format]
        except KeyError:
            known = ", ".join(repr(name) for name in sorted(self._registry)) or "none"
            raise SerializerDoesNotExist(
                f"no serializer registered for format {format!r}; registered formats: {known}"
            ) from None
        instance: MessageSerializer = serializer_class(*args, **kwargs)
        return instance


#: The name ``channels_redis`` 4.x and ``channels_valkey`` 0.x give the registry class.
SerializersRegistry = SerializerRegistry

registry = SerializerRegistry()
registry.register_serializer("msgpack", MsgPackSerializer)
registry.register_serializer("json", JSONSerializer)


def _make_crypter(
    keys: Sequence[str | bytes] | None, make_fernet: Callable[[str | bytes], Any]
) -> Any:
    """Return a MultiFernet of ``make_fernet(key)`` for ``keys``, or None when no keys are given.

    ``cryptography`` is imported only here, so the package works without it until encryption
    is asked for.
    """
    if keys is None:
        return None
    if isinstance(keys, (str, bytes, bytearray)):
        raise ConfigurationError(
            "symmetric_encryption_keys must be a list of keys, "
            f"not a single {type(keys).__name__}; wrap it: [key]"
        )
    if not isinstance(keys, Sequence):
        # The order matters (the first key encrypts), so sets and iterators are refused.
        raise ConfigurationError(
            f"symmetric_encryption_keys must be a list of keys, not {type(keys).__name__}"
        )
    if not keys:
        return None
    for index, key in enumerate(keys):
        if not isinstance(key, (str, bytes)):
            raise ConfigurationError(
                f"symmetric_encryption_keys[{index}] must be a str or bytes, "
                f"not {type(key).__name__}"
            )
        if not key:
            raise ConfigurationError(f"symmetric_encryption_keys[{index}] is empty")
    try:
        from cryptography.fernet import MultiFernet
    except ImportError as exc:
        raise ConfigurationError(_CRYPTOGRAPHY_MISSING) from exc
    return MultiFernet([make_fernet(key) for key in keys])


# --- explaining a message that cannot be encoded (error path only) --------------------------

_CONTAINERS = (dict, list, tuple)


def _unserializable(
    message: Any, exc: BaseException, encode: Callable[[Any], Any], format: str
) -> SerializationError:
    """Build the error for a failed encode, naming where in ``message`` the problem is.

    The hot path is a single encoder call; only when it has failed is the message walked, each
    leaf and dict key being tried alone with the same encoder until one fails.
    """
    found = _find_unencodable(message, encode)
    if found is None:
        # Nothing wrong leaf by leaf: the message as a whole is the problem (nesting depth).
        return SerializationError(f"message is not serializable by the {format} serializer: {exc}")
    path, problem = found
    return SerializationError(f"{path}: {problem} by the {format} serializer")


def _find_unencodable(message: Any, encode: Callable[[Any], Any]) -> tuple[str, str] | None:
    """Return ``(path, problem)`` for the first value or key ``encode`` rejects.

    Iterative, so a very deep message cannot overflow the stack here as well.
    """
    # Entries are (path, value, leaving); ``leaving`` marks the end of a container's children.
    stack: list[tuple[str, Any, bool]] = [("message", message, False)]
    on_path: set[int] = set()
    checked: set[int] = set()
    while stack:
        path, value, leaving = stack.pop()
        if leaving:
            on_path.discard(id(value))
            checked.add(id(value))
            continue
        if not isinstance(value, _CONTAINERS):
            problem = _try_encode(encode, value, value)
            if problem is not None:
                return path, problem
            continue
        ident = id(value)
        if ident in on_path:
            return path, "circular reference (it contains itself), which is not serializable"
        if ident in checked:
            continue
        on_path.add(ident)
        stack.append((path, value, True))
        if isinstance(value, dict):
            for key in value:
                problem = _try_encode(encode, {key: None}, key)
                if problem is not None:
                    return path, f"key {key!r}: {problem}"
            children = [(_key_path(path, key), item) for key, item in value.items()]
        else:
            children = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        stack.extend((child_path, item, False) for child_path, item in reversed(children))
    return None


def _try_encode(encode: Callable[[Any], Any], probe: Any, culprit: Any) -> str | None:
    """Encode ``probe`` alone; on failure describe ``culprit``, else return None."""
    try:
        encode(probe)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        kind = type(culprit).__name__
        if isinstance(exc, OverflowError) and isinstance(culprit, int):
            return f"int {culprit} is out of range (64 bits at most) and is not serializable"
        if isinstance(exc, TypeError):
            return f"{kind} is not serializable"
        return f"{kind} is not serializable ({exc})"
    return None


def _key_path(path: str, key: Any) -> str:
    if isinstance(key, str):
        return f"{path}[{_json_dumps(key, ensure_ascii=False)}]"
    return f"{path}[{key!r}]"
