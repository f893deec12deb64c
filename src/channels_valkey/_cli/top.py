"""``top``: what ``inspect`` shows, redrawn every ``--interval`` seconds in a terminal.

Each refresh walks the keys as ``inspect`` does (its classification and its one-pipeline read
of each ``SCAN`` page are reused), but stops at a cap, and adds one ``INFO stats clients memory``
per server; the depth of each key is compared with the previous refresh to give its rate of
change. The connections are opened once and kept, so a refresh costs commands, not
connections: three round trips per server (``INFO`` alongside the first ``SCAN``, then the
page's reads, then the liveness read), plus two per further page.

What a refresh costs, per server: one ``SCAN`` per page of up to 1000 keys, one ``ZCARD`` and
one ``ZRANGE`` per key of the layers found, one ``INFO``; and, on the server that holds the
liveness registry when there are process queues, one ``ZMSCORE`` and one ``TIME``. So that a
big keyspace cannot make a refresh expensive, a server's walk stops after ``--max-keys`` keys
have been scanned (``--max-keys / 1000`` pages); the frame then says the view is partial.

Ctrl-C (or SIGTERM) sets an event rather than raising, so a refresh in progress is abandoned,
the terminal is put back (cursor shown, main screen restored) and the exit status is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from channels_valkey._common.connections import build_cluster
from channels_valkey._common.hosts import ClusterHost, Host, on_cluster
from channels_valkey._queue.keys import KeySpace, process_of
from channels_valkey._queue.shard import Shard

from .inspect import SCAN_COUNT, Inventory, KeyStat, _read_page, format_age
from .links import FAILURES, ClientLink, Link, NodeLink, describe_error, text
from .table import plural, table

T = TypeVar("T")

#: The liveness of a process queue's process, as the registry tells it.
ALIVE, DEAD, UNREGISTERED = "alive", "dead", "not registered"


@dataclass(frozen=True)
class ServerInfo:
    """What ``INFO`` says of one server (``None`` where it did not answer)."""

    address: str
    ops_per_sec: int | None = None
    clients: int | None = None
    memory: str | None = None


@dataclass
class Snapshot:
    """One refresh: the keys found, each server's figures, and each process's liveness."""

    inventory: Inventory = field(default_factory=Inventory)
    servers: list[ServerInfo] = field(default_factory=list)
    #: Process id (``client_prefix``) to ``alive``/``dead``/``not registered``; empty when no
    #: registry exists under the prefix (no process takes part in liveness).
    liveness: dict[str, str] = field(default_factory=dict)
    #: Servers whose walk stopped at ``--max-keys``.
    capped: list[str] = field(default_factory=list)
    #: When it was taken (``time.monotonic()``), for rates.
    taken_at: float = 0.0


# --- connections ----------------------------------------------------------------------------


class Entry:
    """One ``hosts`` entry, connected on first use and kept for every refresh. A cluster that
    could not be reached is tried again on the next refresh."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._shard: Shard | None = None
        self._cluster: Any = None

    async def links(self) -> list[Link]:
        if isinstance(self.host, ClusterHost):
            if self._cluster is None:
                client = build_cluster(self.host)
                try:
                    await client.initialize()
                except BaseException:
                    await client.aclose()
                    raise
                self._cluster = client
            return [NodeLink(node) for node in self._cluster.get_primaries()]
        if self._shard is None:
            self._shard = Shard(self.host)
        return [ClientLink(self._shard.client, self.host.describe())]

    async def aclose(self) -> None:
        if self._cluster is not None:
            await self._cluster.aclose()
        if self._shard is not None:
            await self._shard.aclose()


# --- one refresh ----------------------------------------------------------------------------


async def take(entries: Sequence[Entry], keys: KeySpace, max_keys: int) -> Snapshot:
    """One refresh over every server; a server that fails is listed in the errors."""
    snapshot = Snapshot()
    links: list[Link] = []
    for entry in entries:
        try:
            links += await entry.links()
        except FAILURES as error:
            snapshot.inventory.errors.append(f"{entry.host.describe()}: {describe_error(error)}")
    reads = (_read_server(link, keys, max_keys, snapshot) for link in links)
    snapshot.servers = list(await asyncio.gather(*reads))
    await _read_liveness(links, snapshot)
    snapshot.taken_at = time.monotonic()
    return snapshot


async def _read_server(link: Link, keys: KeySpace, max_keys: int, snapshot: Snapshot) -> ServerInfo:
    snapshot.inventory.servers.append(link.address)
    try:
        info, capped = await asyncio.gather(
            link.call("INFO", "stats", "clients", "memory"),
            _scan(link, keys, max_keys, snapshot.inventory),
        )
    except FAILURES as error:
        snapshot.inventory.errors.append(f"{link.address}: {describe_error(error)}")
        return ServerInfo(link.address)
    if capped:
        snapshot.capped.append(link.address)
    return server_info(link.address, info)


async def _scan(link: Link, keys: KeySpace, max_keys: int, inventory: Inventory) -> bool:
    """Inspect's walk, stopped after ``max_keys`` keys scanned; whether it was stopped."""
    count = min(SCAN_COUNT, max_keys)
    cursor: int | bytes = 0
    for _ in range(math.ceil(max_keys / count)):
        cursor, page = await link.call(
            "SCAN", cursor, "MATCH", keys.pattern(), "COUNT", count, "TYPE", "zset"
        )
        await _read_page(link, [text(key) for key in page], keys, inventory)
        if int(cursor) == 0:
            return False
    return True


def server_info(address: str, reply: Any) -> ServerInfo:
    """The figures of an ``INFO`` reply, parsed by the client (a dict) or not (text)."""
    fields: dict[str, Any] = {}
    if isinstance(reply, dict):
        fields = reply
    else:
        for line in text(reply).splitlines():
            name, colon, value = line.partition(":")
            if colon:
                fields[name] = value.strip()

    def number(name: str) -> int | None:
        try:
            return int(fields[name])
        except (KeyError, ValueError, TypeError):
            return None

    memory = fields.get("used_memory_human")
    return ServerInfo(
        address,
        number("instantaneous_ops_per_sec"),
        number("connected_clients"),
        None if memory is None else text(memory),
    )


async def _read_liveness(links: Sequence[Link], snapshot: Snapshot) -> None:
    """Each process queue's process in the registry: alive until its score (server time)."""
    stats = snapshot.inventory.keys
    registry = next((stat for stat in stats if stat.kind == "registry"), None)
    processes = sorted({process_of(stat.name) or "" for stat in stats if stat.kind == "process"})
    link = next((link for link in links if registry and link.address == registry.server), None)
    if registry is None or link is None or not processes:
        return
    try:
        scores, now = await link.batch([("ZMSCORE", registry.key, *processes), ("TIME",)])
        for reply in (scores, now):
            if isinstance(reply, Exception):
                raise reply
    except FAILURES as error:
        snapshot.inventory.errors.append(f"{link.address}: liveness: {describe_error(error)}")
        return
    seconds = int(now[0]) + int(now[1]) / 1e6
    for process, score in zip(processes, scores, strict=True):
        if score is None:
            snapshot.liveness[process] = UNREGISTERED
        else:
            snapshot.liveness[process] = ALIVE if float(score) > seconds else DEAD


def rates(current: Snapshot, previous: Snapshot | None) -> dict[tuple[str, str], float]:
    """Change of size per second of each key since the previous refresh. A key the previous
    refresh did not find was empty then, unless that refresh saw only part of the keys."""
    if previous is None or current.taken_at <= previous.taken_at:
        return {}
    before = {(stat.key, stat.server): stat.size for stat in previous.inventory.keys}
    elapsed = current.taken_at - previous.taken_at
    result: dict[tuple[str, str], float] = {}
    for stat in current.inventory.keys:
        old = before.get((stat.key, stat.server))
        if old is None and previous.capped:
            continue
        result[stat.key, stat.server] = (stat.size - (old or 0)) / elapsed
    return result


# --- the frame ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """Everything one screen shows, so that drawing it is a pure function."""

    title: str
    snapshot: Snapshot
    rates: dict[tuple[str, str], float]
    max_keys: int
    hint: str = ""


def render(frame: Frame, width: int = 80, height: int = 24) -> list[str]:
    """The frame as at most ``height`` lines of at most ``width`` characters: the servers,
    then the deepest queues, process queues and biggest groups, as many of each as fit."""
    snapshot = frame.snapshot
    many = len(snapshot.servers) > 1
    head = [frame.title, "", *_server_lines(snapshot.servers), ""]
    foot = _footer(frame)
    sections = [
        ("QUEUE", _of_kind(snapshot, "channel")),
        ("PROCESS QUEUE", _of_kind(snapshot, "process")),
        ("GROUP", _of_kind(snapshot, "group")),
    ]
    # Each section takes a header line and a blank line after it, besides its rows.
    room = max(height - len(head) - len(foot) - 2 * len(sections), len(sections))
    counts = share([len(stats) for _, stats in sections], room)
    body: list[str] = []
    for (label, stats), count in zip(sections, counts, strict=True):
        body += _section(label, stats[:count], len(stats), frame, many, width)
        body.append("")
    lines = [line[:width] for line in head + body + foot]
    return lines[:height]


def _server_lines(servers: Sequence[ServerInfo]) -> list[str]:
    def show(value: object) -> str:
        return "?" if value is None else str(value)

    rows = [("#", "SERVER", "OPS/S", "CLIENTS", "MEMORY")]
    rows += [
        (str(number), s.address, show(s.ops_per_sec), show(s.clients), show(s.memory))
        for number, s in enumerate(servers, 1)
    ]
    return table(rows, right=(0, 2, 3, 4))


def _of_kind(snapshot: Snapshot, kind: str) -> list[KeyStat]:
    return [stat for stat in snapshot.inventory.sorted_keys() if stat.kind == kind]


def share(sizes: Sequence[int], room: int) -> list[int]:
    """How many rows each section shows: an even share each, and what a short section does
    not use goes to the others in order."""
    counts = [0] * len(sizes)
    left = room
    while left > 0:
        wanting = [i for i, size in enumerate(sizes) if counts[i] < size]
        if not wanting:
            break
        each = max(left // len(wanting), 1)
        for i in wanting:
            extra = min(each, sizes[i] - counts[i], left)
            counts[i] += extra
            left -= extra
    return counts


def _section(
    label: str, stats: Sequence[KeyStat], total: int, frame: Frame, many: bool, width: int
) -> list[str]:
    if not total:
        return [f"{label}S: none"]
    group = label == "GROUP"
    header = [
        f"{label} ({len(stats)} of {total})",
        "MEMBERS" if group else "DEPTH",
        "OLDEST",
        "RATE/S",
    ]
    if label == "PROCESS QUEUE":
        header.append("PROCESS")
    if many:
        header.append("#")
    rows = [header] + [_row(stat, frame, header) for stat in stats]
    return table(fit(rows, width), right=(1, 2, 3))


def _row(stat: KeyStat, frame: Frame, header: Sequence[str]) -> list[str]:
    rate = frame.rates.get((stat.key, stat.server))
    row = [
        stat.name,
        str(stat.size),
        format_age(stat.oldest_age_seconds),
        "-" if rate is None else f"{rate:+.1f}",
    ]
    if "PROCESS" in header:
        row.append(frame.snapshot.liveness.get(process_of(stat.name) or "", "-"))
    if header[-1] == "#":  # the server, by its number in the servers' table
        numbers = {server.address: n for n, server in enumerate(frame.snapshot.servers, 1)}
        row.append(str(numbers.get(stat.server, "?")))
    return row


def fit(rows: list[list[str]], width: int) -> list[list[str]]:
    """The rows with names (the first column) shortened in the middle, so that the table is no
    wider than ``width``: both ends stay, and a process queue's end is its process's id."""
    others = sum(max(len(row[i]) for row in rows) + 2 for i in range(1, len(rows[0])))
    room = max(width - others, 8)
    return [[_shorten(row[0], room), *row[1:]] for row in rows]


def _shorten(name: str, room: int) -> str:
    if len(name) <= room:
        return name
    back = (room - 3) // 2
    return f"{name[: room - 3 - back]}...{name[-back:]}"


def _footer(frame: Frame) -> list[str]:
    snapshot = frame.snapshot
    lines: list[str] = []
    for kind, label in (("inflight", "in-flight backups"), ("undecodable", "undecodable")):
        stats = _of_kind(snapshot, kind)
        if stats:
            messages = plural(sum(s.size for s in stats), "message")
            lines.append(f"{label}: {plural(len(stats), 'key')}, {messages}")
    if snapshot.capped:
        lines.append(
            f"partial view: stopped after {frame.max_keys} keys scanned on "
            f"{plural(len(snapshot.capped), 'server')} (--max-keys)"
        )
    lines += [f"error: {error}" for error in snapshot.inventory.errors]
    if frame.hint:
        lines.append(frame.hint)
    return lines


# --- the terminal ---------------------------------------------------------------------------


class Screen:
    """Draws frames in place on a terminal (the alternate screen, cursor hidden), or one after
    another, a blank line apart, when the output is not a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()

    def size(self) -> tuple[int, int]:
        columns, lines = shutil.get_terminal_size((80, 24))
        return columns, lines

    @contextlib.contextmanager
    def shown(self) -> Iterator[Screen]:
        if self.live:
            self.out.write("\x1b[?1049h\x1b[?25l")
        try:
            yield self
        finally:
            if self.live:
                self.out.write("\x1b[?25h\x1b[?1049l")
            self.out.flush()

    def draw(self, lines: Sequence[str]) -> None:
        if not self.live:
            self.out.write("\n".join(lines) + "\n\n")
        else:
            # Each line is cleared before it is written, so a shorter frame leaves nothing of
            # the previous one; then the rest of the screen is cleared.
            self.out.write("\x1b[H" + "\n".join(f"\x1b[2K{line}" for line in lines) + "\x1b[J")
        self.out.flush()


def title(prefix: str, servers: int, interval: float) -> str:
    where = plural(servers, "server")
    return f"channels-valkey top  prefix {prefix!r}  {where}  every {interval:g}s  " + (
        time.strftime("%H:%M:%S")
    )


async def run(hosts: Sequence[Host], prefix: str, args: Any) -> int:
    """``top``: frames until Ctrl-C (status 0), or one frame with ``--once`` (status 1 if a
    server could not be read, as ``inspect``)."""
    keys = KeySpace(prefix, hash_tags=on_cluster(hosts))
    entries = [Entry(host) for host in hosts]
    try:
        if args.once:
            snapshot = await take(entries, keys, args.max_keys)
            width, height = Screen(sys.stdout).size()
            heading = title(prefix, len(snapshot.servers), args.interval)
            print("\n".join(render(Frame(heading, snapshot, {}, args.max_keys), width, height)))
            return 1 if snapshot.inventory.errors else 0
        await _live(entries, keys, prefix, args)
        return 0
    finally:
        await asyncio.gather(*(entry.aclose() for entry in entries), return_exceptions=True)


async def _live(entries: Sequence[Entry], keys: KeySpace, prefix: str, args: Any) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    previous: Snapshot | None = None
    try:
        with Screen(sys.stdout).shown() as screen:
            while not stop.is_set():
                due = loop.time() + args.interval
                snapshot = await _unless(stop, take(entries, keys, args.max_keys))
                if snapshot is None:
                    return
                heading = title(prefix, len(snapshot.servers), args.interval)
                frame = Frame(
                    heading, snapshot, rates(snapshot, previous), args.max_keys, "Ctrl-C to quit"
                )
                screen.draw(render(frame, *screen.size()))
                previous = snapshot
                await _unless(stop, asyncio.sleep(max(due - loop.time(), 0)))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _unless(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or ``None`` (and ``work`` cancelled) if ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if stop.is_set():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, *FAILURES):
            await task
        return None
    return task.result()
