"""The chat app: a room picker, a room page and the websocket consumer behind it."""
