"""``top`` against a real server: one frame with ``--once``, and the live view in a real
terminal (tmux), fed with traffic while it runs and stopped with Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from channels_valkey._cli.table import plural
from channels_valkey.core import ValkeyChannelLayer
from support.cli import fill, hosts_args, run_cli
from support.servers import Topology, ValkeyServer, free_port

#: How long the terminal may take to show what the test waits for.
BOUND = 30.0


def cells(out: str, name: str) -> list[str]:
    """The cells of the frame's row for ``name``, which may be shortened in the middle."""
    rows = [line.split() for line in out.splitlines() if _shown_as(line.split(" ")[0], name)]
    assert rows, f"no row for {name!r} in:\n{out}"
    return rows[0]


def _shown_as(shown: str, name: str) -> bool:
    if "..." not in shown:
        return shown == name
    front, _, back = shown.partition("...")
    return name.startswith(front) and name.endswith(back)


@pytest.fixture
def server(valkey_server: ValkeyServer) -> Iterator[ValkeyServer]:
    """The standalone server, empty before and after."""
    valkey_server.flushall()
    yield valkey_server
    valkey_server.flushall()


async def traffic(url: str) -> str:
    """Queued messages, groups, and process queues of a live, a dead and an unregistered
    process; returns the live process's queue name."""
    layer = ValkeyChannelLayer(hosts=[url])
    try:
        for number in range(5):
            await layer.send("chat.room", {"type": "chat", "n": number})
        mine = await layer.new_channel()
        await layer.send(mine, {"type": "first"})
        await layer.receive(mine)  # receiving on a local channel makes the layer heartbeat
        for _ in range(3):
            await layer.send(mine, {"type": "queued"})
        await layer.send("specific.gone!a1", {"type": "lost"})
        await layer.send("specific.nobody!b2", {"type": "kept"})
        await layer.group_add("room", mine)
        await layer.group_add("room", "chat.room")
    finally:
        await layer.close()
    return mine[: mine.index("!") + 1]


def test_once_prints_one_frame_of_queues_processes_groups_and_servers(
    server: ValkeyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    process = asyncio.run(traffic(server.url))
    admin: Any = server.client()
    admin.zadd("asgi$alive", {"gone": 1.0})  # a process whose last deadline passed long ago
    server.reset_stats()
    code, out, err = run_cli(capsys, "top", "--once", "--hosts", server.url)
    assert code == 0, err
    stats = server.commandstats()

    assert out.startswith("channels-valkey top  prefix 'asgi'  1 server  every 1s")
    _, _, ops, clients, memory = cells(out, "1")
    assert int(ops) >= 0
    assert int(clients) >= 1  # top itself at least
    assert memory[-1] in "BKMG"
    assert cells(out, "chat.room")[1] == "5"
    assert cells(out, process)[1] == "3"
    assert cells(out, process)[-1] == "alive"
    assert cells(out, "specific.gone!")[-1] == "dead"
    assert cells(out, "specific.nobody!")[-2:] == ["not", "registered"]
    assert cells(out, "room")[1] == "2"
    assert "GROUP (1 of 1)" in out

    # What one refresh cost: a SCAN page, two reads per key, INFO, and the liveness read.
    code, listed, _ = run_cli(capsys, "inspect", "--json", "--hosts", server.url)
    found = len(json.loads(listed))
    assert "keys" not in stats
    assert stats["scan"] == 1
    assert stats["zcard"] == stats["zrange"] == found
    assert stats["info"] == 1
    assert stats["zmscore"] == stats["time"] == 1
    # Besides the reset and the client's handshake on each new connection (not repeated by
    # later refreshes, which reuse the connections), nothing else.
    handshake = {"config|resetstat", "client|setinfo"}
    assert sum(calls for name, calls in stats.items() if name not in handshake) == 4 + 2 * found


def test_max_keys_bounds_a_refresh_and_says_the_view_is_partial(
    server: ValkeyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    admin: Any = server.client()
    with admin.pipeline(transaction=False) as pipe:
        for index in range(2500):
            pipe.zadd(f"asgic{index}", {b"m": time.time()})
        pipe.execute()
    server.reset_stats()
    code, out, err = run_cli(capsys, "top", "--once", "--max-keys", "1000", "--hosts", server.url)
    assert code == 0, err
    stats = server.commandstats()
    assert stats["scan"] == 1
    assert stats["zcard"] < 2500
    assert "partial view: stopped after 1000 keys scanned on 1 server (--max-keys)" in out
    assert len(out.splitlines()) <= 24
    assert all(len(line) <= 80 for line in out.splitlines())

    code, out, _ = run_cli(capsys, "top", "--once", "--hosts", server.url)
    assert code == 0
    assert "partial view" not in out
    assert "QUEUE (" in out
    assert "of 2500)" in out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-keys", "0"], "'0' is not a whole number > 0"),
        (["--interval", "0"], "'0' is not a number of seconds > 0"),
        (["--json"], "top has no --json"),
    ],
)
def test_bad_options_exit_with_2(
    server: ValkeyServer, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "top", "--once", "--hosts", server.url, *option)
    assert code == 2
    assert message in err


def test_unreachable_server_is_an_error_in_the_frame(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"valkey://127.0.0.1:{free_port()}"
    code, out, _ = run_cli(capsys, "top", "--once", "--hosts", dead)
    assert code == 1
    assert f"error: {dead}: " in out


# --- in a terminal --------------------------------------------------------------------------


class Terminal:
    """A detached tmux session of 80x24 on a server of its own."""

    def __init__(self) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            pytest.fail(
                "tmux is not installed: the live view is tested in it (apt-get install tmux)"
            )
        self.base = [tmux, "-L", f"top-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def start(self, command: str) -> None:
        """Run ``command`` in the terminal, which stays open after it ends (a dead pane
        would not tell what the command left the terminal in)."""
        self.tmux("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", f"{command}; sleep 600")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def wait_for(self, check: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + BOUND
        while True:
            shown = self.screen()
            if check(shown):
                return shown
            if time.monotonic() > deadline:
                pytest.fail(f"not within {BOUND:.0f} s: {what}; the terminal shows:\n{shown}")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10, check=False)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


def depth_shown(name: str, depth: int) -> Callable[[str], bool]:
    def check(shown: str) -> bool:
        return any(line.split()[:2] == [name, str(depth)] for line in shown.splitlines())

    return check


async def send(url: str, channel: str, count: int) -> None:
    layer = ValkeyChannelLayer(hosts=[url])
    try:
        for number in range(count):
            await layer.send(channel, {"type": "m", "n": number})
    finally:
        await layer.close()


def test_live_view_in_a_terminal_follows_traffic_and_quits_on_ctrl_c(
    server: ValkeyServer, terminal: Terminal, tmp_path: Path
) -> None:
    status = tmp_path / "status"
    command = (
        f"{sys.executable} -m channels_valkey top --hosts {server.url} --interval 0.2; "
        f"echo $? > {status}"
    )
    terminal.start(command)
    terminal.wait_for(lambda shown: "QUEUES: none" in shown, "an empty frame")

    asyncio.run(send(server.url, "live.room", 7))
    shown = terminal.wait_for(depth_shown("live.room", 7), "the queue's depth of 7")
    assert "Ctrl-C to quit" in shown
    assert all(len(line) <= 80 for line in shown.splitlines())

    asyncio.run(send(server.url, "live.room", 4))
    terminal.wait_for(depth_shown("live.room", 11), "the queue's depth of 11")

    terminal.tmux("send-keys", "-t", "top", "C-c")
    deadline = time.monotonic() + BOUND
    while not status.exists() or not status.read_text().strip():
        if time.monotonic() > deadline:
            pytest.fail(f"top did not exit on Ctrl-C; the terminal shows:\n{terminal.screen()}")
        time.sleep(0.05)
    assert status.read_text().strip() == "0"
    after = terminal.screen()
    assert "Traceback" not in after
    # The main screen is back and the cursor shows again.
    assert terminal.tmux(
        "display-message", "-p", "-t", "top", "#{alternate_on} #{cursor_flag}"
    ).split() == ["0", "1"]


@pytest.mark.parametrize(
    "topology", ["standalone", "sharded", "unix", "tls", "sentinel", "cluster"], indirect=True
)
def test_once_on_every_topology(topology: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(fill(topology.hosts))
    code, out, err = run_cli(capsys, "top", "--once", *hosts_args(topology.hosts))
    assert code == 0, err
    servers = 3 if topology.name in ("sharded", "cluster") else 1
    assert out.startswith(f"channels-valkey top  prefix 'asgi'  {plural(servers, 'server')}")
    server_rows = [line for line in out.splitlines() if line.endswith(("B", "K", "M", "G"))]
    assert len(server_rows) == servers
    depth = sum(int(row[1]) for row in all_cells(out, "chat.room"))
    assert depth == 3  # a normal channel's messages take the shards in turn
    assert cells(out, "room")[1] == "2"
    assert cells(out, "lobby")[1] == "1"


def all_cells(out: str, name: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.split(" ")[0] == name]
