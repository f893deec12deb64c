"""Event loops closed without cleanup, as scripts and test suites close them.

``get_channel_layer()`` keeps one layer object for the whole process, so a test suite uses one
layer across many event loops, and some close their loop without cancelling its tasks
(``loop.run_until_complete(...)`` then ``loop.close()``). Whatever the layer had on such a
loop must neither block nor steal anything on the next one, and must vanish quietly.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from channels_valkey._common.per_loop import quiet
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.servers import ValkeyServer

LAYERS = {"core": ValkeyChannelLayer, "pubsub": ValkeyPubSubChannelLayer}


def blocked_clients(servers: list[ValkeyServer]) -> int:
    return sum(int(server.client().info("clients")["blocked_clients"]) for server in servers)


async def _use_then_leave_a_receive_pending(layer: Any, pending: list[asyncio.Task[Any]]) -> None:
    """Loop A: send, receive, and leave a receive() waiting, its pop on the server."""
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m", "n": -1})
    assert (await layer.receive(channel))["n"] == -1
    if isinstance(layer, ValkeyChannelLayer):
        await layer.send("chan", {"type": "m", "n": -1})
        assert (await layer.receive("chan"))["n"] == -1
        pending.append(asyncio.ensure_future(layer.receive("chan")))
    pending.append(asyncio.ensure_future(layer.receive(channel)))
    await asyncio.sleep(0.2)  # the pops are on the server now (not asserted: only an aid)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_loop_closed_without_cleanup_leaves_nothing_behind(
    kind: str,
    hosts: list[Any],
    topology_servers: list[ValkeyServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's sequence: loop A is closed with a receive() pending; then asyncio.run()
    sends 6 messages and receives them with the same layer object. Every one arrives, the
    pops of loop A are gone from the server once the layer is used again, and nothing is
    printed but one log line."""
    caplog.set_level(logging.INFO)
    layer = LAYERS[kind](hosts=hosts)
    pending: list[asyncio.Task[Any]] = []  # kept referenced: a user's own tasks are theirs
    loop_a = asyncio.new_event_loop()
    loop_a.run_until_complete(_use_then_leave_a_receive_pending(layer, pending))
    loop_a.close()

    async def loop_b() -> tuple[list[int], list[int], int]:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "m", "n": 0})
        blocked = blocked_clients(topology_servers)  # after the layer's first command
        for n in range(1, 6):
            await layer.send(channel, {"type": "m", "n": n})
        local = [(await asyncio.wait_for(layer.receive(channel), 10))["n"] for _ in range(6)]
        normal: list[int] = []
        if kind == "core":
            for n in range(6):
                await layer.send("chan", {"type": "m", "n": n})
            normal = [(await asyncio.wait_for(layer.receive("chan"), 10))["n"] for _ in range(6)]
        await layer.flush()
        await layer.close()
        return local, normal, blocked

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        local, normal, blocked = asyncio.run(loop_b())
        for task in pending:  # the test's own tasks, never to finish: not worth a report
            quiet(task)
        pending.clear()
        gc.collect()
    assert local == list(range(6))
    # (Sorted: with several shards, a normal channel keeps order per shard only.)
    assert sorted(normal) == ([] if kind == "pubsub" else list(range(6)))
    assert blocked == 0
    assert [str(w.message) for w in caught] == []
    printed = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(printed) == 1, [r.getMessage() for r in printed]
    ours = [r.getMessage() for r in caplog.records if "name='channels_valkey" in r.getMessage()]
    assert ours == []
    assert printed[0].name == "channels_valkey._common.per_loop"
    assert "closed while" in printed[0].getMessage()


INNER_TESTS = '''
"""Written the way a project's own tests often are: one layer object for the whole module
(as get_channel_layer() keeps one), a fixture that uses it and never closes it."""
import asyncio
import json
import os

import pytest

from channels_valkey._common.per_loop import quiet
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

KIND = os.environ["LAYER_KIND"]
CLASS = ValkeyChannelLayer if KIND == "core" else ValkeyPubSubChannelLayer
LAYER = CLASS(hosts=json.loads(os.environ["LAYER_HOSTS"]))
PENDING = []


@pytest.fixture
async def layer():
    await LAYER.flush()
    return LAYER


@pytest.mark.parametrize("n", range(8))
async def test_send_receive(layer, n):
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "m", "n": n})
    await layer.send(channel, {"type": "m", "n": n + 1})
    got = [(await asyncio.wait_for(layer.receive(channel), 10))["n"] for _ in range(2)]
    assert got == [n, n + 1]
    PENDING.append(asyncio.ensure_future(layer.receive(channel)))  # left waiting


@pytest.mark.parametrize("n", range(4))
def test_old_style_loop_closed_without_cancelling(n):
    loop = asyncio.new_event_loop()

    async def use():
        channel = await LAYER.new_channel()
        await LAYER.send(channel, {"type": "m", "n": n})
        assert (await asyncio.wait_for(LAYER.receive(channel), 10))["n"] == n
        PENDING.append(asyncio.ensure_future(LAYER.receive(channel)))
        await asyncio.sleep(0.05)

    loop.run_until_complete(use())
    loop.close()
    for task in PENDING:  # this test's own tasks, never to finish: not worth a report
        task._log_destroy_pending = False
'''


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("topology", ["standalone", "sentinel", "cluster"], indirect=True)
def test_a_test_suite_sharing_one_layer_across_its_loops(
    kind: str, hosts: list[Any], tmp_path: Path
) -> None:
    """Many pytest-asyncio tests in a row, one layer object shared by all, fixtures that
    never close it, some tests closing their loop without cancelling: all pass, and the run
    prints no warning about tasks, loops or connections."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    env = {**os.environ, "LAYER_KIND": kind, "LAYER_HOSTS": json.dumps(hosts)}
    run = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-W",
            "error::ResourceWarning",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "12 passed" in output, output
    for sign in (
        "Event loop is closed",
        "was destroyed but it is pending",
        "never awaited",
        "nclosed",
        "ResourceWarning",
        "Exception ignored",
    ):
        assert sign not in output, output


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_close_returns_with_every_socket_closed(kind: str, hosts: list[Any]) -> None:
    """``loop.run_until_complete(layer.close())`` then ``loop.close()``: the loop runs no
    more after close() returns, so close() must not leave a socket to be closed later."""
    layer = LAYERS[kind](hosts=hosts)
    loop = asyncio.new_event_loop()

    async def use() -> None:
        channel = await layer.new_channel()
        await asyncio.gather(*(layer.send(channel, {"type": "m", "n": n}) for n in range(20)))
        assert [(await layer.receive(channel))["n"] for _ in range(20)] == list(range(20))
        await layer.group_send("room", {"type": "m"})

    try:
        loop.run_until_complete(use())
        loop.run_until_complete(layer.close())
    finally:
        loop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        gc.collect()
