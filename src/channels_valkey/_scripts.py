"""The Lua scripts in ``lua/``, loaded once per process and called by SHA.

Each call sends ``EVALSHA`` with the script's SHA-1; a server that does not know the script
yet (first use, restart, failover) answers ``NOSCRIPT``, and the script is loaded and the call
repeated once. The source never travels with a normal call. On a cluster the same is done per
node by ``_cluster_lanes``, which sends :meth:`Script.command` itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from valkey.exceptions import NoScriptError

if TYPE_CHECKING:
    from ._lane import Lane

Arg = str | bytes | int | float


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        source = files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_text("utf-8")
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())

    def command(self, keys: Sequence[Any], args: Sequence[Arg]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command that runs this script on ``keys`` with ``args``."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def __call__(self, lane: Lane, keys: list[str], args: list[Arg]) -> object:
        command = self.command(keys, args)
        try:
            return await lane.execute_command(*command)
        except NoScriptError:
            await lane.script_load(self.source)
            return await lane.execute_command(*command)


SEND = Script.load("send")
SEND_MANY = Script.load("send_many")
SEND_BATCH = Script.load("send_batch")
GROUP_ADD = Script.load("group_add")
REQUEUE = Script.load("requeue")
WAKE = Script.load("wake")
ALIVE = Script.load("alive")
