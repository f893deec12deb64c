"""A process whose channels sit in groups, for the liveness tests to kill with SIGKILL.

It builds a ``ValkeyChannelLayer`` from the JSON options given, makes ``count`` channels, adds
each to every group named, and receives on all of them (so it heartbeats). Once it has done a
first heartbeat it prints one JSON line, ``{"process": client_prefix, "channels": [...]}``,
and then receives until it is killed.

Usage: ``python member.py <layer options as JSON> <count> <group>...``
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from channels_valkey.core import ValkeyChannelLayer


async def main(options: dict[str, Any], count: int, groups: list[str]) -> None:
    layer = ValkeyChannelLayer(**options)
    channels = [await layer.new_channel() for _ in range(count)]
    for channel in channels:
        for group in groups:
            await layer.group_add(group, channel)
    receivers = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    # A group send now reaches this process: the heartbeat has started with the receives.
    # Reading the registry here waits for its first beat without guessing a time.
    registry = layer._keys.alive()
    shard = (await layer._resources()).shards[layer._registry_shard]
    while layer.client_prefix not in await shard.group_members(registry, 0):  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # the first beat is a server write, not an event here
    print(json.dumps({"process": layer.client_prefix, "channels": channels}), flush=True)
    while True:  # receive forever, as a server's consumers do
        done, _ = await asyncio.wait(receivers, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            index = receivers.index(task)
            receivers[index] = asyncio.create_task(layer.receive(channels[index]))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
