"""``inspect``: what the layer keeps in Valkey under its prefix, key by key.

Keys are found with ``SCAN`` (never ``KEYS``, which blocks the server while it walks every key)
on every server that holds keys: each ``hosts`` entry, every primary of a cluster. Only sorted
sets are asked for (``SCAN ... TYPE zset``): every key of the layers is one, so anything else
under the prefix belongs to someone else. The sizes and oldest scores of one ``SCAN`` page
are read in one pipeline, one round trip per page.

What a key is follows from its name (see ``_queue.keys``):

- ``prefix:group:name`` is a group, scored by the time each member joined;
- ``prefix + name`` is a channel's queue, scored by send time; a name ending in ``!`` is the
  queue a process shares for all its local channels;
- ``prefix + name + "$inflight"`` is a message channels_redis popped and had not yet handed
  on (its in-flight backup), so workers of channels_redis share the server;
- keys with ``$wake:`` are this package's own short-lived wake-up keys: counted, not listed;
- ``prefix + "$alive"`` is the registry of processes that heartbeat (``_queue.liveness``), one
member
  per process, scored by its last heartbeat: listed as ``registry``.

On a cluster the name is in a hash tag (``asgi{chat}``); the braces are not part of the name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from channels_valkey._common.connections import build_cluster
from channels_valkey._common.hosts import ClusterHost, Host, on_cluster
from channels_valkey._common.scripts import Arg
from channels_valkey._queue.keys import ALIVE_SUFFIX, UNDECODABLE_SUFFIX, KeySpace
from channels_valkey._queue.shard import Shard

from .links import FAILURES, ClientLink, Link, NodeLink, describe_error, text
from .table import plural, table

SCAN_COUNT = 1000

_GROUP_MARK = KeySpace("").group("")
_WAKE_MARK = KeySpace("").wake("", "")
#: The suffix channels_redis gives a channel's in-flight backup (``_backup_channel_name``).
INFLIGHT_SUFFIX = "$inflight"

#: What each kind of key holds, for the summary line.
_UNITS = {
    "channel": "message",
    "process": "message",
    "inflight": "message",
    "undecodable": "message",
    "group": "member",
    "registry": "process",
}


@dataclass(frozen=True)
class KeyStat:
    """One key: its kind (``channel``, ``process``, ``inflight``, ``undecodable``,
    ``group`` or ``registry``), the channel or
    group name, its size (messages, or members) and the age in seconds of its oldest entry
    (the oldest message's send time, or the oldest membership's join time)."""

    kind: str
    name: str
    key: str
    server: str
    size: int
    oldest_age_seconds: float | None


@dataclass
class Inventory:
    keys: list[KeyStat] = field(default_factory=list)
    #: Keys of our own (wake keys), counted but not listed.
    internal: int = 0
    servers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def sorted_keys(self) -> list[KeyStat]:
        return sorted(self.keys, key=lambda k: (-k.size, k.kind, k.name, k.server))


def classify(key: str, prefix: str, *, hash_tags: bool) -> tuple[str, str] | None:
    """``(kind, name)`` for a key of the layers, ``("internal", key)`` for a wake key,
    ``None`` for a key that is not under ``prefix``."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    if _WAKE_MARK in rest:
        return "internal", key
    if rest == ALIVE_SUFFIX:
        return "registry", "live processes"
    if rest.startswith(_GROUP_MARK):
        return "group", _untag(rest[len(_GROUP_MARK) :], hash_tags)
    if rest.endswith(INFLIGHT_SUFFIX):
        return "inflight", _untag(rest[: -len(INFLIGHT_SUFFIX)], hash_tags)
    if rest.endswith(UNDECODABLE_SUFFIX):
        return "undecodable", _untag(rest[: -len(UNDECODABLE_SUFFIX)], hash_tags)
    name = _untag(rest, hash_tags)
    return ("process" if name.endswith("!") else "channel"), name


def _untag(name: str, hash_tags: bool) -> str:
    if hash_tags and name.startswith("{") and name.endswith("}"):
        return name[1:-1]
    return name


async def inspect_all(hosts: Sequence[Host], prefix: str) -> Inventory:
    """Every server's keys under ``prefix``; servers that fail are listed in ``errors``."""
    inventory = Inventory()
    hash_tags = on_cluster(hosts)
    keys = KeySpace(prefix, hash_tags=hash_tags)
    await asyncio.gather(*(_inspect_entry(host, keys, inventory) for host in hosts))
    return inventory


async def _inspect_entry(host: Host, keys: KeySpace, inventory: Inventory) -> None:
    if isinstance(host, ClusterHost):
        client = build_cluster(host)
        try:
            try:
                await client.initialize()
            except FAILURES as error:
                inventory.errors.append(f"{host.describe()}: {describe_error(error)}")
                return
            links = [NodeLink(node) for node in client.get_primaries()]
            await asyncio.gather(*(_inspect_server(link, keys, inventory) for link in links))
        finally:
            await client.aclose()
        return
    shard = Shard(host)
    try:
        await _inspect_server(ClientLink(shard.client, host.describe()), keys, inventory)
    finally:
        await shard.aclose()


async def _inspect_server(link: Link, keys: KeySpace, inventory: Inventory) -> None:
    inventory.servers.append(link.address)
    try:
        cursor: int | bytes = 0
        while True:
            cursor, page = await link.call(
                "SCAN", cursor, "MATCH", keys.pattern(), "COUNT", SCAN_COUNT, "TYPE", "zset"
            )
            await _read_page(link, [text(key) for key in page], keys, inventory)
            if int(cursor) == 0:
                return
    except FAILURES as error:
        inventory.errors.append(f"{link.address}: {describe_error(error)}")


async def _read_page(link: Link, page: list[str], keys: KeySpace, inventory: Inventory) -> None:
    """Size and oldest entry of each key of one SCAN page, in one round trip."""
    wanted: list[tuple[str, str, str]] = []
    for key in page:
        kind_name = classify(key, keys.prefix, hash_tags=keys.hash_tags)
        if kind_name is None:
            continue
        if kind_name[0] == "internal":
            inventory.internal += 1
        else:
            wanted.append((key, *kind_name))
    commands: list[Sequence[Arg]] = []
    for key, _, _ in wanted:
        commands += [("ZCARD", key), ("ZRANGE", key, 0, 0, "WITHSCORES")]
    replies = await link.batch(commands)
    now = time.time()
    for (key, kind, name), size, first in zip(wanted, replies[::2], replies[1::2], strict=True):
        for reply in (size, first):
            if isinstance(reply, Exception):
                raise reply
        if not size:  # expired or emptied since the SCAN
            continue
        score = _first_score(first)
        age = None if score is None else round(now - score, 3)
        inventory.keys.append(KeyStat(kind, name, key, link.address, int(size), age))


def _first_score(reply: Any) -> float | None:
    """The score of ``ZRANGE key 0 0 WITHSCORES``: ``[member, score]`` as the server sends it,
    or ``[(member, score)]`` where the client pairs them up."""
    if not reply:
        return None
    first = reply[0]
    score = first[1] if isinstance(first, tuple | list) else reply[1]
    return float(score)


# --- output ---------------------------------------------------------------------------------


def as_json(inventory: Inventory) -> list[dict[str, Any]]:
    return [asdict(stat) for stat in inventory.sorted_keys()]


def render(inventory: Inventory, prefix: str) -> str:
    """The keys, largest first, and a summary line per kind."""
    stats = inventory.sorted_keys()
    lines: list[str] = []
    if stats:
        rows = [("KIND", "NAME", "SIZE", "OLDEST", "SERVER")]
        rows += [
            (s.kind, s.name, str(s.size), format_age(s.oldest_age_seconds), s.server) for s in stats
        ]
        lines += table(rows, right=(2, 3))
        lines.append("")
    where = plural(len(inventory.servers), "server")
    lines.append(f"{plural(len(stats), 'key')} under prefix {prefix!r} on {where}")
    for kind in ("channel", "process", "inflight", "undecodable", "group", "registry"):
        of_kind = [s for s in stats if s.kind == kind]
        if of_kind:
            total = sum(s.size for s in of_kind)
            lines.append(f"  {kind}: {len(of_kind)}, {plural(total, _UNITS[kind])}")
    if inventory.internal:
        lines.append(f"  ({plural(inventory.internal, 'internal wake key')} not listed)")
    return "\n".join(lines)


def format_age(age: float | None) -> str:
    if age is None:
        return "-"
    if age < 60:
        return f"{age:.1f}s"
    minutes, seconds = divmod(int(age), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
