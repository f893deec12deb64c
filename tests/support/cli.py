"""Helpers for the command-line tool's tests: running it in-process, and giving it work."""

from __future__ import annotations

import json
from typing import Any

import pytest

from channels_valkey._cli.main import main
from channels_valkey.core import ValkeyChannelLayer


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the tool in-process, as ``channels-valkey argv...`` would: (exit code, out, err)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def hosts_args(hosts: list[Any]) -> list[str]:
    """``--hosts`` options for a ``hosts`` list: URLs as they are, other entries as JSON."""
    args: list[str] = []
    for entry in hosts:
        args += ["--hosts", entry if isinstance(entry, str) else json.dumps(entry)]
    return args


async def fill(hosts: list[Any]) -> str:
    """Messages on a normal channel and two local channels of one process, and two groups;
    returns the process's queue name (``specific.<id>!``)."""
    layer = ValkeyChannelLayer(hosts=hosts)
    try:
        for number in range(3):
            await layer.send("chat.room", {"type": "chat", "n": number})
        first, second = await layer.new_channel(), await layer.new_channel()
        await layer.send(first, {"type": "hello"})
        await layer.send(second, {"type": "hello"})
        await layer.group_add("room", first)
        await layer.group_add("room", second)
        await layer.group_add("lobby", "chat.room")
    finally:
        await layer.close()
    return first[: first.index("!") + 1]
