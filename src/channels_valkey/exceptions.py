"""The few exceptions this package raises of its own.

``ChannelFull`` is not here: the layers raise ``channels.exceptions.ChannelFull`` so that code
written against the Channels API catches it whatever the backend.
"""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A layer option has a wrong type or value.

    Raised when the layer is built, never at the first ``send``, and the message names the
    option and the entry at fault. It is a ``ValueError`` so that code written for
    ``channels_redis`` (which raises ``ValueError`` for bad options) keeps working.
    """


class SerializerDoesNotExist(ConfigurationError, KeyError):
    """``serializer_format`` names a format nobody registered.

    Also a ``KeyError``, the type ``channels_redis`` raises for the same mistake.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would quote the whole message; show it as written.
        return str(self.args[0]) if self.args else ""


class SerializationError(TypeError):
    """A message holds a value its serializer cannot encode; the message names the key."""


class MessageTooLarge(ValueError):
    """A message serializes to more bytes than the layer's ``max_message_size``.

    Raised by ``send``, ``group_send`` and their bulk forms before anything is sent, so one
    huge message never occupies a connection the process's other commands share. The
    message names the channel or group, the size and the limit.
    """

    def __init__(self, target: str, size: int, limit: int) -> None:
        super().__init__(
            f"message for {target} is {size} bytes serialized, over max_message_size "
            f"({limit} bytes); send a reference to the data (a key, a URL) instead"
        )
        self.target = target
        self.size = size
        self.limit = limit


class ServerUnreachable(ConnectionError):
    """A Valkey server could not be reached, even after reconnecting and retrying.

    A ``ConnectionError`` (the built-in one), raised by ``send``, ``group_send`` and the other
    calls when the server stays unreachable past the retry policy's deadline (10 s, plus the
    attempt in flight then; see ``_common.retry``), and by ``receive`` when its reader cannot
    reconnect within it. The message names the server.
    """

    def __init__(self, server: str, cause: BaseException) -> None:
        super().__init__(f"cannot reach Valkey at {server}: {cause}")
        self.server = server


class NotReplicated(Exception):
    """``send`` queued the message, but fewer replicas than ``wait_for_replicas`` confirmed it
    in time: if the primary fails now, the message may be lost with it.

    The message is queued and may well be delivered; retrying the send may deliver it twice.
    """

    def __init__(self, server: str, confirmed: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"Valkey at {server} queued the message, but only {confirmed} of {wanted} "
            f"replicas confirmed it within {timeout:g} s"
        )
        self.confirmed = confirmed
