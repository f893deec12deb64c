"""Room names, the channel layer groups they map to, and which process is serving."""

from __future__ import annotations

import os
import re
from typing import Any

# Channels accepts a group name only if it is shorter than 100 characters and made of ASCII
# alphanumerics, hyphens, underscores and periods (see channels.layers.BaseChannelLayer).
# Every room is the group GROUP_PREFIX + room name, so the room name gets what is left.
GROUP_PREFIX = "chat."
MAX_GROUP_NAME_LENGTH = 99
MAX_ROOM_NAME_LENGTH = MAX_GROUP_NAME_LENGTH - len(GROUP_PREFIX)
_ROOM_NAME = re.compile(r"[A-Za-z0-9._-]+")


def is_valid_room_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_ROOM_NAME_LENGTH
        and _ROOM_NAME.fullmatch(name) is not None
    )


def group_name(room: str) -> str:
    return GROUP_PREFIX + room


def server_info(scope: dict[str, Any]) -> dict[str, Any]:
    """This process and the port the connection came in on, as shown to the viewer."""
    server = scope.get("server") or (None, None)
    return {"pid": os.getpid(), "port": server[1]}
