"""Where each command of a cluster operation goes, and what its reply asks for next: pure
planning, no I/O (``_cluster_lanes`` sends what is planned here).

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
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from valkey.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from ._scripts import Script

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


def plan(
    todo: Sequence[int],
    calls: Sequence[Call],
    asked: Mapping[int, str],
    owner: Callable[[int], str | None],
) -> tuple[list[Route], list[int]]:
    """Group the calls at positions ``todo`` into one :class:`Route` per node: the node an
    ``ASK`` named for the call (``asked``), or else the ``owner`` of its slot. Also returns
    the positions whose slot no node serves in the map."""
    groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
    unrouted: list[int] = []
    for position in todo:
        target = asked.get(position)
        if target is not None:
            groups[target, True].append(position)
            continue
        node = owner(calls[position].slot)
        if node is None:
            unrouted.append(position)
        else:
            groups[node, False].append(position)
    routes = [Route(node, asking, positions) for (node, asking), positions in groups.items()]
    return routes, unrouted


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
