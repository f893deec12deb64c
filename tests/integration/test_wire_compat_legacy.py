"""Wire compatibility with the older ``channels_valkey`` 0.x, run in a virtual env of its own.

That package has our import name, so it cannot be imported here; a peer process
(``tests/peers/peer.py``) runs it, and the tests talk to it line by line. The environment is
made once under ``.venv-peers/`` from PyPI.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import venv
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any, cast

import pytest

from channels_valkey.core import ValkeyChannelLayer
from support.servers import SERVER_KIND, ValkeyServer

ROOT = Path(__file__).resolve().parents[2]
LEGACY = "channels-valkey==0.3.0"
LEGACY_LAYER = "channels_valkey.core.ValkeyChannelLayer"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        SERVER_KIND == "redis",
        reason="channels-valkey 0.3 calls server.call() in its Lua scripts, which Redis lacks",
    ),
]


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    """The python of a virtual env holding channels-valkey 0.3.0 (made on first use)."""
    env = ROOT / ".venv-peers" / "channels-valkey-0.3"
    python = env / "bin" / "python"
    stamp = env / ".installed"
    if not stamp.exists():
        venv.create(env, with_pip=True, clear=True)
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"{LEGACY.replace('==', '[cryptography]==')}",
            ],
            check=True,
        )
        stamp.touch()
    return python


class Peer:
    """The legacy layer in its own process."""

    def __init__(self, python: Path, config: dict[str, Any]) -> None:
        self._process = subprocess.Popen(
            [python, str(ROOT / "tests" / "peers" / "peer.py"), LEGACY_LAYER, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Popen types its pipes as optional; they exist because PIPE was asked for.
        self._stdin = cast(IO[str], self._process.stdin)
        self._stdout = cast(IO[str], self._process.stdout)

    def _call_sync(self, op: str, **args: Any) -> Any:
        self._stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._stdin.flush()
        reply = json.loads(self._stdout.readline())
        if "error" in reply:
            raise RuntimeError(f"peer {op} failed: {reply['error']}")
        return reply["ok"]

    async def call(self, op: str, **args: Any) -> Any:
        return await asyncio.to_thread(self._call_sync, op, **args)

    def close(self) -> None:
        self._stdin.close()  # the peer's loop ends at end of input
        self._process.wait(10)
        self._stdout.close()


OPTIONS = [
    pytest.param({}, id="msgpack"),
    pytest.param({"serializer_format": "json"}, id="json"),
    pytest.param({"symmetric_encryption_keys": ["shared-secret"]}, id="encrypted"),
]


@pytest.fixture(params=OPTIONS)
async def pair(
    request: pytest.FixtureRequest, legacy_python: Path, valkey_server: ValkeyServer
) -> AsyncIterator[tuple[ValkeyChannelLayer, Peer]]:
    valkey_server.flushall()
    config = {"hosts": [valkey_server.url], **request.param}
    ours = ValkeyChannelLayer(**config)
    peer = Peer(legacy_python, config)
    yield ours, peer
    peer.close()
    await ours.flush()
    await ours.close()


async def within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, 10)


async def test_normal_channel_both_ways(pair: tuple[ValkeyChannelLayer, Peer]) -> None:
    ours, peer = pair
    for n in range(3):
        await peer.call("send", channel="legacy.to.ours", message={"type": "m", "n": n})
    assert [(await within(ours.receive("legacy.to.ours")))["n"] for _ in range(3)] == [0, 1, 2]
    await ours.send("ours.to.legacy", {"type": "m", "text": "hé"})
    assert await peer.call("receive", channel="ours.to.legacy") == {"type": "m", "text": "hé"}


async def test_process_local_channels_both_ways(pair: tuple[ValkeyChannelLayer, Peer]) -> None:
    ours, peer = pair
    mine = await ours.new_channel()
    await peer.call("send", channel=mine, message={"type": "to.ours"})
    assert await within(ours.receive(mine)) == {"type": "to.ours"}
    theirs = await peer.call("new_channel")
    await ours.send(theirs, {"type": "to.legacy"})
    assert await peer.call("receive", channel=theirs) == {"type": "to.legacy"}


async def test_groups_both_ways(pair: tuple[ValkeyChannelLayer, Peer]) -> None:
    ours, peer = pair
    mine, theirs = await ours.new_channel(), await peer.call("new_channel")
    await ours.group_add("room", mine)
    await peer.call("group_add", group="room", channel=theirs)
    senders: list[Callable[[], Awaitable[None]]] = [
        lambda: ours.group_send("room", {"type": "from.ours"}),
        lambda: peer.call("group_send", group="room", message={"type": "from.legacy"}),
    ]
    for send, expected in zip(senders, ("from.ours", "from.legacy"), strict=True):
        await send()
        assert await within(ours.receive(mine)) == {"type": expected}
        assert await peer.call("receive", channel=theirs) == {"type": expected}
    await peer.call("group_discard", group="room", channel=mine)
    await ours.group_send("room", {"type": "after.discard"})
    assert await peer.call("receive", channel=theirs) == {"type": "after.discard"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ours.receive(mine), 0.3)
