"""A channel layer in a process of its own, driven line by line over stdin/stdout.

It lets the suite run a peer package that cannot be imported beside ours (the older
``channels_valkey`` 0.x has the same import name) in its own virtual environment. Each input
line is a JSON request such as ``{"op": "send", "channel": "c", "message": {...}}``; each
output line is the JSON result, ``{"ok": value}`` or ``{"error": "..."}``.

Usage: ``python peer.py <layer class path> <layer config as JSON>``
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from typing import Any


def load_layer(path: str, config: dict[str, Any]) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**config)


async def serve(layer: Any) -> None:
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "receive":
                result = await asyncio.wait_for(layer.receive(**request), 10)
            else:
                result = await getattr(layer, op)(**request)
            reply = {"ok": result}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)
    await layer.close_pools()


if __name__ == "__main__":
    asyncio.run(serve(load_layer(sys.argv[1], json.loads(sys.argv[2]))))
