"""Checks on what users pass to ``send`` and ``group_send``, shared by both layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channels_valkey.exceptions import MessageTooLarge

#: The message key that carries the full name of a process-local channel (or, for group sends,
#: the list of names) inside the queue its process shares. Users may not set it.
RESERVED_KEY = "__asgi_channel__"


def check_message(message: object) -> dict[str, Any]:
    """Return ``message`` if the layer can carry it, else raise naming what is wrong."""
    if not isinstance(message, dict):
        raise TypeError(f"A message must be a dict, got {type(message).__name__}")
    if RESERVED_KEY in message:
        raise ValueError(
            f"Messages may not contain the key {RESERVED_KEY!r}: the layer uses it to route "
            "messages to process-local channels"
        )
    return message


def check_messages(messages: object) -> list[dict[str, Any]]:
    """The messages of a bulk send as a list, each checked like ``send``'s; an error names
    the position of the message at fault."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes | bytearray):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    checked = []
    for position, message in enumerate(messages):
        try:
            checked.append(check_message(message))
        except (TypeError, ValueError) as error:
            raise type(error)(f"messages[{position}]: {error}") from None
    return checked


def check_size(payload: bytes, limit: int | None, target: str) -> bytes:
    """Return ``payload`` if it fits ``max_message_size``, else raise naming ``target``
    (e.g. ``"channel 'chat'"``), the size and the limit."""
    if limit is not None and len(payload) > limit:
        raise MessageTooLarge(target, len(payload), limit)
    return payload
