"""Checks on what users pass to ``send`` and ``group_send``, shared by both layers."""

from __future__ import annotations

from typing import Any

from ._keys import RESERVED_KEY


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
