"""The example chat, started as ``example/run`` starts it, passes messages between processes.

A private valkey-server and two uvicorn processes come up through the example's launcher; a
websocket client joins the same room on each process, and what one sends the other receives.
The channel layer is channels_valkey's unless CHANNEL_LAYER_BACKEND names another.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example"
BACKEND = os.environ.get("CHANNEL_LAYER_BACKEND") or "channels_valkey.core.ValkeyChannelLayer"
WAIT = 10.0  # seconds for any one expected event


def _load_launcher() -> Any:
    spec = importlib.util.spec_from_file_location("example_launcher", EXAMPLE_DIR / "launcher.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()


@pytest.fixture
def example(request: pytest.FixtureRequest) -> Iterator[Any]:
    # The servers' output goes to stdout, which pytest shows when the test fails.
    running = launcher.Example(ports=[0, 0], backend=request.param, sink=print)
    try:
        try:
            running.start()
        except launcher.StartupError as exc:
            pytest.fail(f"the example did not start: {exc}")
        yield running
    finally:
        running.stop()


async def _next(socket: ClientConnection, **expected: Any) -> dict[str, Any]:
    """The next message from ``socket`` whose items include ``expected``; others are skipped."""

    async def wait() -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await socket.recv())
            if expected.items() <= message.items():
                return message

    return await asyncio.wait_for(wait(), WAIT)


def _join(server: Any, room: str) -> Any:
    origin = server.url.rstrip("/")
    return connect(
        f"ws{origin.removeprefix('http')}/ws/chat/{room}/", origin=origin, open_timeout=WAIT
    )


@pytest.mark.parametrize("example", [BACKEND], indirect=True)
async def test_messages_cross_between_server_processes(example: Any) -> None:
    a, b = example.servers
    assert a.pid != b.pid
    room = f"test-{uuid.uuid4().hex}"
    async with _join(a, room) as via_a, _join(b, room) as via_b:
        # The welcome comes after group_add: from then on each socket gets the room's messages.
        welcome_a = await _next(via_a, type="welcome")
        welcome_b = await _next(via_b, type="welcome")
        assert welcome_a["server"] == {"pid": a.pid, "port": a.port}
        assert welcome_b["server"] == {"pid": b.pid, "port": b.port}

        await via_a.send(json.dumps({"text": "hello from A"}))
        received = await _next(via_b, type="message", text="hello from A")
        assert received["sender"] == welcome_a["server"]
        assert received["receiver"] == welcome_b["server"]

        await via_b.send(json.dumps({"text": "hello from B"}))
        received = await _next(via_a, type="message", text="hello from B")
        assert received["sender"] == welcome_b["server"]
        assert received["receiver"] == welcome_a["server"]
