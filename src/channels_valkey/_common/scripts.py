"""Lua scripts called by SHA: the source travels only when a server does not know it yet.

Each call sends ``EVALSHA`` with the script's SHA-1; a server that does not know the script
yet (first use, restart, failover) answers ``NOSCRIPT``, and the script is loaded and the call
repeated once. On a cluster the same is done per node by ``cluster_lanes``, which sends
:meth:`Script.command` itself. The scripts themselves belong to the layer that runs them
(the core layer's are in ``_queue/lua``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from valkey.exceptions import NoScriptError

if TYPE_CHECKING:
    from .lane import Lane

#: What a command argument can be.
Arg = str | bytes | int | float


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, package: str, name: str) -> Script:
        """The script ``lua/<name>.lua`` of ``package``."""
        source = files(package).joinpath("lua").joinpath(f"{name}.lua").read_text("utf-8")
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
