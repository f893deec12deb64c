"""Where each command of a cluster operation goes, and what its reply asks for next: pure
planning, no I/O (``_common.cluster_lanes`` sends what is planned here).

An operation is a list of :class:`Call`, one command each, already tied to the slot of its
keys. Its calls are grouped by the primary that serves their slot, so each primary gets one
write for all of them (the operation's one round trip per node). A reply then tells what to do
with its call: keep it, or send it again after a redirection (``MOVED``, ``ASK``), after
loading a script (``NOSCRIPT``), or after a pause (``TRYAGAIN``, ``CLUSTERDOWN``). Each of
those replies means the command did not run, so sending it again never runs it twice.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar, cast

from valkey.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from .scripts import Script

K = TypeVar("K", bound=Hashable)

ASKING: tuple[Any, ...] = ("ASKING",)


class Call(NamedTuple):
    """One command of an operation, for the primary serving ``slot``; ``script`` is the
    script an ``EVALSHA`` command runs (loaded on a node that answers ``NOSCRIPT``)."""

    slot: int
    command: tuple[Any, ...]
    script: Script | None = None


class Step(enum.Enum):
    """What a reply asks for."""

    DONE = "done"  # the command ran (its reply may still be an error of its own)
    MOVED = "moved"  # the slot is served elsewhere now: learn it, send there
    ASK = "ask"  # the slot is being migrated: send there once, after ASKING
    NOSCRIPT = "noscript"  # load the script on that node, send again
    WAIT = "wait"  # the cluster is changing (TRYAGAIN, CLUSTERDOWN): pause, send again


def step(reply: object) -> Step:
    # MovedError is an AskError, so it is asked first.
    if isinstance(reply, MovedError):
        return Step.MOVED
    if isinstance(reply, AskError):
        return Step.ASK
    if isinstance(reply, NoScriptError):
        return Step.NOSCRIPT
    if isinstance(reply, TryAgainError | ClusterDownError):
        return Step.WAIT
    return Step.DONE


def node_name(host: str, port: int | str) -> str:
    """A node's name, as valkey-py's slot map and the layers' lanes key it."""
    return f"{host}:{port}"


def redirect_target(error: AskError, answered_by: str) -> str:
    """The node a ``MOVED`` or ``ASK`` names; one announced without a host is on the host of
    the node that answered."""
    host = error.host or answered_by.rsplit(":", 1)[0]
    return node_name(host, error.port)


def positions_by(keys: Iterable[K]) -> dict[K, list[int]]:
    """The positions of equal keys, grouped, in the order each key first appears."""
    groups: dict[K, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        groups[key].append(position)
    return dict(groups)


class Route(NamedTuple):
    """The calls one write carries: to ``node``, each preceded by ``ASKING`` if ``asking``."""

    node: str
    asking: bool
    positions: list[int]


class Progress:
    """One operation's calls over its rounds: the replies so far, the calls still to send and
    where, and what the last round met. A round :meth:`plan` s the calls still to do, then
    each of its writes is :meth:`answered` or has :meth:`failed`."""

    def __init__(self, calls: Sequence[Call]) -> None:
        self.calls = calls
        self.results: list[object] = [None] * len(calls)
        #: Positions of the calls still to send.
        self.todo: list[int] = list(range(len(calls)))
        #: Position -> the node an ``ASK`` named for that call (for its next send only).
        self.asked: dict[int, str] = {}
        #: What the last round met that calls for a pause before the next (``TRYAGAIN``, a
        #: connection error...), if anything.
        self.trouble: Exception | None = None
        #: The last round's ``MOVED`` replies, with the node that sent each: to learn.
        self.moved: list[tuple[AskError, str]] = []
        #: The scripts to load before the next round, by node.
        self.scripts: dict[str, set[Script]] = {}

    @property
    def finished(self) -> bool:
        return not self.todo

    def plan(self, owner: Callable[[int], str | None]) -> list[Route]:
        """Start a round: the calls still to do in one :class:`Route` per node, to the node
        an ``ASK`` named for the call, or else to the ``owner`` of its slot. A call whose slot
        no node serves in the map stays to do, and is trouble."""
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        unrouted: list[int] = []
        for position in self.todo:
            target = self.asked.get(position)
            if target is not None:
                groups[target, True].append(position)
                continue
            node = owner(self.calls[position].slot)
            if node is None:
                unrouted.append(position)
            else:
                groups[node, False].append(position)
        self.todo, self.moved, self.scripts = unrouted, [], {}
        slot = self.calls[unrouted[0]].slot if unrouted else None
        self.trouble = LookupError(f"no node serves slot {slot}") if unrouted else None
        return [Route(node, asking, positions) for (node, asking), positions in groups.items()]

    def failed(self, route: Route, error: Exception | None) -> None:
        """A write got no replies: its calls are to do again; ``error`` is trouble, ``None``
        for a failure that needs no pause (the map already sends them elsewhere)."""
        self.todo += route.positions
        if error is not None:
            self.trouble = error

    def answered(self, route: Route, replies: Sequence[object]) -> None:
        """The replies of a write's calls (:func:`replies_of`): keep each, or plan what its
        call needs next."""
        for position, reply in zip(route.positions, replies, strict=True):
            self.asked.pop(position, None)
            what = step(reply)
            if what is Step.DONE:
                self.results[position] = reply
                continue
            self.todo.append(position)
            if what is Step.MOVED:
                self.moved.append((cast(AskError, reply), route.node))
            elif what is Step.ASK:
                self.asked[position] = redirect_target(cast(AskError, reply), route.node)
            elif what is Step.NOSCRIPT:
                script = self.calls[position].script
                if script is not None:
                    self.scripts.setdefault(route.node, set()).add(script)
            else:
                self.trouble = cast(Exception, reply)


def commands_of(route: Route, calls: Sequence[Call]) -> list[tuple[Any, ...]]:
    """The commands of one write: each call's command, after ``ASKING`` on an asking route
    (``ASKING`` lets the next command only into a slot being imported)."""
    if not route.asking:
        return [calls[position].command for position in route.positions]
    commands: list[tuple[Any, ...]] = []
    for position in route.positions:
        commands += [ASKING, calls[position].command]
    return commands


def replies_of(route: Route, replies: Sequence[object]) -> Sequence[object]:
    """The calls' replies among a write's replies (without those to ``ASKING``)."""
    return replies[1::2] if route.asking else replies
