"""Client round trips, counted inside valkey-py's and redis-py's asyncio connections.

Every command, every pipeline (once for all its commands), every blocking pop and every
``SUBSCRIBE`` goes through ``send_packed_command``: one write, then waiting for a reply, so
one round trip. Wrapping that one method counts them all for any layer built on either
client, without touching the layer. Each asyncio task tags itself with its role (``ROLE``),
so the report can give the sender's share apart. Runs in the measured layer's venv.
"""

from __future__ import annotations

import contextvars
import importlib
from collections import Counter
from typing import Any

#: The role of the asyncio task (and of the tasks it starts) that sends a command.
ROLE: contextvars.ContextVar[str] = contextvars.ContextVar("bench_role", default="other")
ROUND_TRIPS: Counter[str] = Counter()


def count_round_trips() -> list[str]:
    """Count every command (or pipeline) written by valkey-py's or redis-py's asyncio clients."""
    patched = []
    for package in ("valkey", "redis"):
        try:
            module = importlib.import_module(f"{package}.asyncio.connection")
        except ImportError:
            continue
        cls = module.AbstractConnection
        original = cls.send_packed_command

        async def counted(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            ROUND_TRIPS[ROLE.get()] += 1
            return await _original(self, *args, **kwargs)

        cls.send_packed_command = counted
        patched.append(package)
    # The lane's module, where it is now and where builds before the package's subpackages had it.
    for path in ("channels_valkey._common.lane", "channels_valkey._lane"):
        try:
            lane = importlib.import_module(path)
        except ImportError:
            continue
        break
    else:
        return patched
    link = getattr(lane, "_Link", None)
    if link is not None:
        write = link._write

        def counted_write(self: Any, *args: Any, _original: Any = write) -> Any:
            ROUND_TRIPS[ROLE.get()] += 1
            return _original(self, *args)

        link._write = counted_write
        patched.append("channels_valkey lanes")
    return patched
