"""Commands to a Valkey Cluster on one :class:`~channels_valkey._common.lane.Lane` per primary.

valkey-py's cluster client opens a connection per concurrent command on each node, so a burst
of N senders holds N connections per primary. Here each primary gets one ``Lane``, which
carries every non-blocking command of the event loop to it (the layers' connection model, see
``_common.lane``), and the routing is done by the layer:

- *Slot map*: valkey-py's (``ValkeyCluster.nodes_manager``) reads and holds it; a command's
  slot is looked up there and its call goes to that primary's lane. Each node's lane is built
  on a pool for that node with the cluster client's connection options (TLS, auth, the
  health-checked connection class of ``_common.connections.build_cluster``);
  :func:`_node_options` is the one place that turns those into a node's, for the lanes' pools
  and for :meth:`ClusterLanes.connection_to`.
- *Operations over many slots* (``_common.cluster_routing.Progress``): the calls are grouped
  by primary, each group goes out in one ``execute_many`` on its lane, the primaries
  concurrently.
- ``MOVED``: that one slot is patched in the map (never a full reload for it) and the call
  sent to the node named. ``ASK``: ``ASKING`` and the call in one write to the node named.
  ``NOSCRIPT``: the script is loaded on that node and the call sent again. None of these ran
  the command, so nothing runs twice.
- ``TRYAGAIN``, ``CLUSTERDOWN``, connection errors and redirections that go round: tried again
  under the layer's retry policy (``_common.retry.Outage``), the map reloaded where it may have
  changed; reloads are shared by concurrent callers (``_common.single_flight``). After the
  deadline, :class:`~channels_valkey.exceptions.ServerUnreachable`.
- *Failover*: a lane retries a lost connection by itself, which would hold its commands on a
  dead primary until the policy's deadline. So a failed connect to a node also starts a map
  reload; once the map no longer names the node as a primary, its connections refuse to
  connect (:class:`NodeRetired`), which ends the lane's retries at once, and its commands are
  routed again to the promoted replica. The lane is closed.

Commands that block their connection (``WAIT``) cannot ride a lane: :meth:`ClusterLanes.pinned`
runs them on a connection of their own from the node's pool, kept for reuse. A connection that
is held for long (a reader's blocking pop, a subscriber's connection) comes from
:meth:`ClusterLanes.connection_to` and belongs to whoever asked for it.

Both layers reach a cluster through one :class:`ClusterLanes` per event loop
(:meth:`ClusterLanes.for_host`), which they close with its ``aclose`` (or ``abandon``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

from valkey.asyncio import ConnectionPool
from valkey.asyncio.cluster import ClusterNode, ValkeyCluster
from valkey.asyncio.connection import AbstractConnection
from valkey.cluster import PRIMARY
from valkey.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError

from channels_valkey.exceptions import ServerUnreachable

from . import cluster_routing as routing
from .cluster_routing import Call, Route, Step
from .connections import (
    REDIRECT_ERRORS,
    abandon_connections,
    build_cluster,
    close_connections,
)
from .hosts import ClusterHost
from .lane import Lane
from .per_loop import release_dead
from .retry import TRANSIENT_ERRORS, Outage, retrying
from .scripts import Arg, Script
from .single_flight import SingleFlight

#: Rounds of redirections an operation follows at once; past that the cluster is still
#: changing, and it waits as after an error, with the map reloaded.
MAX_HOPS = 5

#: Where a reload of the slot map may fail: no node reachable, or none agreeing.
_RELOAD_ERRORS: tuple[type[Exception], ...] = REDIRECT_ERRORS


class NodeRetired(Exception):
    """A connection to a node that no longer serves slots as a primary was refused: not a
    transient error, so a lane raises it at once instead of retrying."""


#: How a lane's write to a node fails: the connection error that ended its retries, or a node
#: whose connections no longer connect.
_LANE_ERRORS: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, NodeRetired)
#: How loading a script on a node fails: as a write does, or refused by the node.
_LOAD_ERRORS: tuple[type[Exception], ...] = (*_LANE_ERRORS, ResponseError)


class _Gate:
    """Tells a node's connections whether they may connect, and reports failed connects."""

    __slots__ = ("lanes", "name", "retired")

    def __init__(self, lanes: ClusterLanes, name: str) -> None:
        self.lanes, self.name = lanes, name
        self.retired = False


class _Gated(AbstractConnection):
    """Mixed in before a node's connection class: see :class:`NodeRetired`."""

    _gate: _Gate | None = None

    def __init__(self, *args: Any, node_gate: _Gate | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = node_gate

    async def connect(self) -> None:
        gate = self._gate
        if gate is None or self.is_connected:
            await super().connect()  # type: ignore[no-untyped-call]
            return
        if gate.retired:
            raise NodeRetired(f"{gate.name} no longer serves slots")
        try:
            await super().connect()  # type: ignore[no-untyped-call]
        except TRANSIENT_ERRORS:
            gate.lanes.node_failed()
            raise


_gated_classes: dict[type[Any], type[Any]] = {}


def _gated(base: type[Any]) -> type[Any]:
    """``base`` with the gate mixed in; one class per base, made on first use."""
    gated = _gated_classes.get(base)
    if gated is None:
        gated = _gated_classes[base] = type(
            f"Gated{base.__name__}", (_Gated, base), {"__module__": __name__}
        )
    return gated


def split_name(name: str) -> tuple[str, int]:
    """A node's ``host`` and ``port`` from its name (``host:port``)."""
    host, port = name.rsplit(":", 1)
    return host, int(port)


def _node_options(client: ValkeyCluster, name: str) -> dict[str, Any]:
    """What a connection to node ``name`` is made with: the cluster client's connection
    options (TLS, auth, timeouts, its ``connection_class``) and the node's address."""
    host, port = split_name(name)
    options = cast("dict[str, Any]", client.get_connection_kwargs())
    kwargs = {
        key: value
        for key, value in options.items()
        if key not in ("response_callbacks", "max_connections")
    }
    return {**kwargs, "host": host, "port": port}


class _Node:
    """One primary: its pool, the lane built on it, and the gate of its connections."""

    def __init__(self, lanes: ClusterLanes, name: str) -> None:
        self.gate = _Gate(lanes, name)
        options = _node_options(lanes.client, name)
        self.pool = ConnectionPool(
            **{**options, "connection_class": _gated(options["connection_class"])},
            node_gate=self.gate,
        )
        self.lane = Lane(self.pool)

    async def exclusive(self, commands: list[tuple[Any, ...]]) -> list[object]:
        """``commands`` in one write on a connection nothing else uses meanwhile; their
        replies, an error reply as its exception."""
        connection: AbstractConnection = await self.pool.get_connection("_")  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
            replies = [await _read_reply(connection) for _ in commands]
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await self.pool.release(connection)
        return replies

    async def aclose(self) -> None:
        self.gate.retired = True
        await close_connections(self.pool, self.lane)

    def abandon(self) -> None:
        self.gate.retired = True
        abandon_connections(self.pool, self.lane)


async def _read_reply(connection: AbstractConnection) -> object:
    try:
        reply: object = await connection.read_response()
    except ResponseError as error:
        return error
    return reply


class ClusterLanes:
    """The primaries of one cluster, as one event loop sees them (see the module)."""

    def __init__(self, client: ValkeyCluster, where: str) -> None:
        #: Holds the slot map and the connection options; its own connections serve only
        #: reading the map and the rare commands the layers still send through it.
        self.client = client
        self.where = where
        self._nodes: dict[str, _Node] = {}
        self._reloads = SingleFlight(self._read_map)
        self._closed = False

    @classmethod
    def for_host(cls, host: ClusterHost) -> ClusterLanes:
        """The lanes of the cluster a ``hosts`` entry names, with a client of its own."""
        return cls(build_cluster(host), host.describe())

    def __repr__(self) -> str:
        return f"<ClusterLanes {self.where} primaries={len(self._nodes)}>"

    # --- the slot map ----------------------------------------------------------------------

    def slot(self, key: str | bytes) -> int:
        return self.client.keyslot(key)

    def owner(self, slot: int) -> str | None:
        """The primary serving ``slot`` in the map, by name."""
        nodes = self.client.nodes_manager.slots_cache.get(slot)
        return nodes[0].name if nodes else None

    def learn(self, moved: AskError, answered_by: str) -> None:
        """Patch the map for the one slot a ``MOVED`` names (as valkey-py does with
        ``reinitialize_steps=0``; its full reload is kept for errors)."""
        manager = self.client.nodes_manager
        name = routing.redirect_target(moved, answered_by)
        node = manager.nodes_cache.get(name)
        if node is None:
            host, port = split_name(name)
            node = ClusterNode(host, port, PRIMARY, **manager.connection_kwargs)
            manager.nodes_cache[name] = node
        node.server_type = PRIMARY
        manager.slots_cache[moved.slot_id] = [node]

    async def ready(self) -> None:
        """The first map, read once (shared by concurrent callers)."""
        if not self.client.nodes_manager.slots_cache:
            await self.refresh()

    async def refresh(self) -> None:
        """Read the map again; concurrent callers share one read."""
        await self._reloads()

    def node_failed(self) -> None:
        """A connect to a node failed: read the map in the background, to learn whether a
        replica took over (see :class:`NodeRetired`)."""
        if not self._closed:
            self._reloads.start()

    async def _read_map(self) -> None:
        if self.client.nodes_manager.slots_cache:
            await self.client.nodes_manager.initialize()
        else:
            await self.client.initialize()  # also what valkey-py's own commands need
        primaries = {node.name for node in self.client.get_primaries()}
        gone = [self._nodes.pop(name) for name in list(self._nodes) if name not in primaries]
        for node in gone:
            node.gate.retired = True  # before any await: a lane retrying stops now
        await asyncio.gather(*(node.aclose() for node in gone))

    def _node(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            if self._closed:
                raise RuntimeError(f"{self.where}: closed on this event loop")
            node = self._nodes[name] = _Node(self, name)
        return node

    def connection_to(self, name: str) -> AbstractConnection:
        """A new, unconnected connection to node ``name`` with the cluster client's options,
        outside every lane and pool: for a connection held for long (a blocking pop, a
        subscription). Whoever asked for it owns it and disconnects it."""
        options = _node_options(self.client, name)
        connection: AbstractConnection = options.pop("connection_class")(**options)
        return connection

    # --- commands --------------------------------------------------------------------------

    async def command(self, key: str | bytes, *args: Any) -> Any:
        """One command on ``key``'s primary; its reply, an error reply raised."""
        (reply,) = await self.run_raising([Call(self.slot(key), args)])
        return reply

    async def script(self, script: Script, keys: list[str], args: Sequence[Arg]) -> object:
        """``script`` on ``keys`` (of one slot); its reply, an error reply raised."""
        call = Call(self.slot(keys[0]), script.command(keys, args), script)
        (reply,) = await self.run_raising([call])
        return reply

    async def run_raising(self, calls: Sequence[Call]) -> list[Any]:
        """As :meth:`run`, for an operation that fails as a whole: the first error reply of
        a command (in the calls' order) is raised."""
        return [_raised(reply) for reply in await self.run(calls)]

    async def run(self, calls: Sequence[Call]) -> list[object]:
        """Run every call, one write per primary, the primaries concurrently; their replies
        in order. An error reply of the command itself is returned as its exception; errors
        of the cluster are followed or waited out (see the module), then raised as
        :class:`~channels_valkey.exceptions.ServerUnreachable`."""
        started = time.monotonic()
        outage: Outage | None = None
        progress = routing.Progress(calls)
        hops = 0
        while True:
            trouble = await self._round(progress)
            if progress.finished:
                return progress.results
            hops += 1
            if trouble is None and hops < MAX_HOPS:
                continue  # redirected: at once
            outage = outage or Outage(started)
            delay = outage.next_pause()
            if delay is None:
                cause = trouble or ResponseError("redirected too often")
                raise ServerUnreachable(self.where, cause) from cause
            if not isinstance(trouble, TryAgainError):  # a key split by a migration: no news
                self._reloads.start()  # in the background, during the pause
            await asyncio.sleep(delay)
            hops = 0

    async def _round(self, progress: routing.Progress) -> Exception | None:
        """Send each call still to do once, one write per node, the nodes concurrently; what
        calls for a pause before the next round, if anything."""
        try:
            if not self.client.nodes_manager.slots_cache:
                await self.refresh()
        except _RELOAD_ERRORS as error:
            return error
        routes = progress.plan(self.owner)
        if len(routes) == 1:
            outcomes = [await self._exchange(routes[0], progress.calls)]
        else:
            outcomes = await asyncio.gather(*(self._exchange(r, progress.calls) for r in routes))
        for route, outcome in zip(routes, outcomes, strict=True):
            if isinstance(outcome, NodeRetired):
                progress.failed(route, None)
            elif isinstance(outcome, Exception):
                progress.failed(route, outcome)  # the lane gave up: the map may be stale
            else:
                progress.answered(route, outcome)
        for moved, answered_by in progress.moved:
            self.learn(moved, answered_by)
        if progress.scripts and progress.trouble is None:
            progress.trouble = await self._load_scripts(progress.scripts)
        return progress.trouble

    async def _exchange(self, route: Route, calls: Sequence[Call]) -> Sequence[object] | Exception:
        """One write to a node: the replies of its calls, or the connection error that ended
        the lane's retries (or :class:`NodeRetired`)."""
        try:
            node = self._node(route.node)
            replies = await node.lane.execute_many(routing.commands_of(route, calls))
        except _LANE_ERRORS as error:
            return error
        return routing.replies_of(route, replies)

    async def _load_scripts(self, scripts: dict[str, set[Script]]) -> Exception | None:
        """Load scripts on the nodes that answered ``NOSCRIPT``; the error that stopped it."""
        try:
            for name, wanted in scripts.items():
                lane = self._node(name).lane
                for script in wanted:
                    await lane.script_load(script.source)
        except _LOAD_ERRORS as error:
            return error
        return None

    async def pinned(
        self, script: Script, keys: list[str], args: Sequence[Arg], then: tuple[Any, ...]
    ) -> tuple[object, object]:
        """``script`` and then the command ``then`` on one connection of their own to the
        primary of ``keys``: for ``WAIT``, which counts the replicas that have that
        connection's writes and holds the connection meanwhile, so it cannot share a lane.
        Both replies; an error reply raised."""
        return await retrying(
            lambda: self._pinned(script, keys, args, then), _PINNED_RETRIED, self.where
        )

    async def _pinned(
        self, script: Script, keys: list[str], args: Sequence[Arg], then: tuple[Any, ...]
    ) -> tuple[object, object]:
        await self.ready()
        slot = self.slot(keys[0])
        command = script.command(keys, args)
        name, asking = self.owner(slot), False
        reply: object = None
        for _ in range(MAX_HOPS):
            if name is None:
                raise LookupError(f"no node serves slot {slot}")  # retried
            node = self._node(name)
            commands = [routing.ASKING, command, then] if asking else [command, then]
            try:
                replies = await node.exclusive(commands)
            except TRANSIENT_ERRORS:
                self._reloads.start()
                raise
            except NodeRetired:
                name, asking = self.owner(slot), False
                continue
            reply, after = replies[-2], replies[-1]
            what = routing.step(reply)
            if what is Step.MOVED:
                self.learn(cast(AskError, reply), name)
                name, asking = self.owner(slot), False
            elif what is Step.ASK:
                name, asking = routing.redirect_target(cast(AskError, reply), name), True
            elif what is Step.NOSCRIPT:
                await node.lane.script_load(script.source)
            else:
                if isinstance(reply, ClusterDownError):
                    self._reloads.start()
                return _raised(reply), _raised(after)
        self._reloads.start()
        raise cast(Exception, reply)  # a redirection that goes round: retried after a pause

    # --- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every lane and the cluster client's connections."""
        self._closed = True
        nodes = list(self._nodes.values())
        self._nodes.clear()
        await asyncio.gather(*(node.aclose() for node in nodes))
        await self._reloads.finish()
        await self.client.aclose()
        # valkey-py skips its own close while a reload is pending (after a connection error);
        # disconnecting the nodes again is harmless and leaves no socket open.
        await self.client.nodes_manager.aclose()
        await self.client.nodes_manager.aclose("startup_nodes")

    def abandon(self) -> None:
        """Release every connection without the event loop, which was closed under them."""
        self._closed = True
        self._reloads.abandon()
        for node in self._nodes.values():
            node.abandon()
        self._nodes.clear()
        abandon_client(self.client)


def abandon_client(client: ValkeyCluster) -> None:
    """Close a cluster client whose event loop was closed under it (see ``_common.per_loop``): its
    nodes' connections, and the client itself, which valkey-py would otherwise report as
    unclosed when it is collected (its ``aclose()`` needs the loop)."""
    for connection in client_connections(client):
        release_dead(connection)
    client._initialize = True  # what aclose() leaves behind


def client_connections(client: ValkeyCluster) -> list[AbstractConnection]:
    """Every connection the cluster client's nodes hold (valkey-py offers no public list)."""
    nodes_manager = client.nodes_manager
    nodes = [*nodes_manager.nodes_cache.values(), *nodes_manager.startup_nodes.values()]
    connections = {
        id(connection): connection
        for node in nodes
        for connection in getattr(node, "_connections", [])
    }
    return list(connections.values())


#: Errors after which :meth:`ClusterLanes.pinned` tries again (after a pause).
_PINNED_RETRIED: tuple[type[Exception], ...] = (*REDIRECT_ERRORS, NodeRetired, LookupError)


def _raised(reply: object) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply
