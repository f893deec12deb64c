"""Liveness: telling which processes are gone, so that their channels leave groups.

A process killed with ``kill -9``, by the OOM killer or with its host never calls
``group_discard``, so without this its channels would stay in every group for
``group_expiry``, and each group send would keep filling a queue nobody reads.

Taking part is explicit. A layer that receives on one of its process-local channels
heartbeats: every ``process_expiry / 4`` seconds one script call (``lua/alive.lua``) scores its
``client_prefix`` in a registry (``KeySpace.alive``, one sorted set on one server) with the time
until which it counts as alive: the server's time plus its own ``process_expiry``, so processes
configured differently still judge each other by what each declared. A member of a group is
dead when its process is in the registry and that time has passed; a process that is not in the
registry at all (channels_redis, older releases, a layer with liveness turned off) is never
judged, so its channels are kept exactly as before.

Each layer keeps a view of the dead: the same script call that heartbeats returns them, and
only when they changed since the caller last heard (a count and the latest deadline among
them tell), so a heartbeat stays small however many processes have died. A layer
that does not heartbeat (it only sends) reads the view with that script, at most once per
interval, sent alongside a group read and never awaited by it, so a group send keeps its round
trips. Only when it finds dead members does it pay more: a read of the registry alongside its
writes, to confirm them (a process that has just come back keeps its memberships), then one
``ZREM`` on the group's server and one ``UNLINK`` of the dead queues per server holding them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

from channels_valkey._common.log import RateLimitedLog
from channels_valkey.exceptions import ServerUnreachable

from .keys import process_of
from .scripts import AliveReply
from .shard import QueueServer

logger = logging.getLogger(__name__)


class Liveness:
    """One layer's heartbeat and its view of the dead processes."""

    def __init__(self, process: str, registry: str, expiry: float, group_expiry: int) -> None:
        #: This layer's ``client_prefix``: the id it heartbeats under.
        self.process = process
        self.registry = registry
        self.expiry = expiry
        #: Four heartbeats per expiry: one or two may be lost to a failover or a stall
        #: without the process being taken for dead.
        self.interval = expiry / 4
        #: How long after its deadline a dead process stays in the registry: until its
        #: memberships, which are no older than its last heartbeat, have all expired.
        self.keep = group_expiry + math.ceil(expiry)
        self._dead: frozenset[str] = frozenset()
        #: What the registry said of the dead last time (see ``lua/alive.lua``).
        self._known: tuple[int, str] = (0, "")
        self._learned_at = -math.inf
        self._failure_log = RateLimitedLog(logger)

    @property
    def fresh(self) -> bool:
        """Whether the view is recent enough to use without reading it again. A heartbeat
        renews it every interval, so a process that heartbeats never reads it separately."""
        return time.monotonic() - self._learned_at < self.interval * 1.5

    @property
    def has_dead(self) -> bool:
        return bool(self._dead)

    def dead_among(self, members: Sequence[str]) -> list[str]:
        """The members that are channels of dead processes."""
        if not self._dead:
            return []
        return [member for member in members if process_of(member) in self._dead]

    def learn(self, reply: AliveReply) -> None:
        if reply.dead is not None:
            # A layer never takes itself for dead: it is running this.
            self._dead = frozenset(reply.dead) - {self.process}
        self._known = reply.known
        self._learned_at = time.monotonic()

    async def refresh(self, server: QueueServer) -> bool:
        """Read the view without heartbeating; ``False`` if the registry could not be read.
        Then the old view is kept, for one more interval: liveness only ever removes
        members, and what a process cannot read it does not act on."""
        try:
            reply = await server.alive(self.registry, "", self.expiry, self.keep, self._known)
        except Exception as error:
            self._failure_log.warning("Could not read the live processes: %s", error)
            self._learned_at = time.monotonic()
            return False
        self.learn(reply)
        return True

    async def heartbeat(self, server: QueueServer) -> None:
        """Heartbeat until cancelled (by the per-loop resources that own this task)."""
        while True:
            recorded = await self.beat(server)
            await asyncio.sleep(self.interval if recorded else self.interval / 4)

    async def beat(self, server: QueueServer) -> bool:
        """One heartbeat; ``False`` when the server could not be reached, so that the next
        try comes sooner than the next interval. Any other failure (a user not allowed to
        run the script) is logged and waits for the next interval like a success."""
        try:
            reply = await server.alive(
                self.registry, self.process, self.expiry, self.keep, self._known
            )
        except ServerUnreachable as error:
            self._failure_log.warning("Could not record this process's heartbeat: %s", error)
            return False
        except Exception as error:
            self._failure_log.warning("Could not record this process's heartbeat: %s", error)
            return True
        self.learn(reply)
        if reply.silent is not None and reply.silent > self.expiry:
            logger.warning(
                "This process did not heartbeat for %.0f s, longer than process_expiry (%g s): "
                "other processes may have taken it for dead and removed its channels from "
                "groups",
                reply.silent,
                self.expiry,
            )
        return True
