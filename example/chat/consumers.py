"""The websocket end of a room: one consumer per browser tab, all tabs of a room in one group.

``group_send`` hands a message to the channel layer, which delivers it to every member of the
group whatever process that member's socket is connected to. That is what the example shows:
each message carries the process it was sent from, and each socket reports the process that
delivered it.
"""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .rooms import MAX_ROOM_NAME_LENGTH, group_name, is_valid_room_name, server_info

MAX_MESSAGE_LENGTH = 2000

# Close code (application range 4000-4999) for a room name that cannot be a group name.
INVALID_ROOM = 4400


class ChatConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room_name"]
        self.server = server_info(self.scope)
        if not is_valid_room_name(room):
            # Accept first so that the client can read why it is turned away.
            await self.accept()
            await self.send_json(
                {
                    "type": "error",
                    "error": "A room name is 1 to "
                    f"{MAX_ROOM_NAME_LENGTH} ASCII letters, digits, '-', '_' or '.'.",
                }
            )
            await self.close(code=INVALID_ROOM)
            return
        self.group = group_name(room)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # Sent once the socket is in the group: from here on it gets the room's messages.
        await self.send_json({"type": "welcome", "room": room, "server": self.server})

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return json.loads(text_data)
        except ValueError:
            return None

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        text = content.get("text") if isinstance(content, dict) else None
        if self.group is None or not isinstance(text, str) or not text.strip():
            await self.send_json({"type": "error", "error": 'Send {"text": "a message"}.'})
            return
        await self.channel_layer.group_send(
            self.group,
            {
                "type": "chat.message",
                "text": text.strip()[:MAX_MESSAGE_LENGTH],
                "sender": self.server,
            },
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A message of the room, from this process or another one."""
        await self.send_json(
            {
                "type": "message",
                "text": event["text"],
                "sender": event["sender"],
                "receiver": self.server,
            }
        )
