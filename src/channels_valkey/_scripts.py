"""The Lua scripts in ``lua/``, loaded once per process and called by SHA.

Each call sends ``EVALSHA`` with the script's SHA-1; a server that does not know the script
yet (first use, restart, failover) answers ``NOSCRIPT``, and the script is loaded and the call
repeated once. The source never travels with a normal call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from valkey.exceptions import NoScriptError

if TYPE_CHECKING:
    from valkey.asyncio.cluster import ValkeyCluster

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

    async def __call__(
        self, client: Lane | ValkeyCluster, keys: list[str], args: list[Arg]
    ) -> object:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        runner: Any = client  # valkey-py types execute_command on one client class only
        try:
            return await runner.execute_command(*command)
        except NoScriptError:
            # A cluster client sends SCRIPT LOAD to every primary.
            await runner.script_load(self.source)
            return await runner.execute_command(*command)


SEND = Script.load("send")
SEND_MANY = Script.load("send_many")
SEND_BATCH = Script.load("send_batch")
GROUP_ADD = Script.load("group_add")
REQUEUE = Script.load("requeue")
WAKE = Script.load("wake")
ALIVE = Script.load("alive")
