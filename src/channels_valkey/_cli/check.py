"""``check``: can the layer work against these servers, as they are configured now?

Every ``hosts`` entry is followed to the servers the layer would use: a plain server, each
Sentinel of a Sentinel entry and the primary they name, every node of a cluster (primaries and
replicas). For each the report gives what an operator asks first: is it reachable, which
version and role, how far away (median ``PING`` round trip), and would the server's ACL let the
layer's connection user run every command the layer sends. The ACL question is put to the
server with ``ACL DRYRUN``, so the answer is the server's own, for sample keys and channels
under the configured prefix, without running anything.

A problem is something that makes the layer fail (exit 1); a warning is something the tool
could not find out, or that matters only with options not in use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from valkey.asyncio.cluster import ClusterNode, ValkeyCluster
from valkey.asyncio.connection import SSLConnection
from valkey.asyncio.sentinel import SentinelConnectionPool
from valkey.exceptions import AuthenticationError, NoPermissionError, ResponseError

from channels_valkey._common.connections import build_cluster
from channels_valkey._common.hosts import ClusterHost, Host, SentinelHost, ServerHost
from channels_valkey._common.scripts import Arg
from channels_valkey._queue.shard import Shard

from .links import (
    FAILURES,
    UNREACHABLE,
    ClientLink,
    Link,
    NodeLink,
    describe_error,
    one_attempt,
    text,
)
from .table import plural, table

#: The oldest server the layer runs on: BZMPOP (the layer's blocking pop) came with 7.0, so every
#: Valkey (the first was 7.2) and Redis from 7.0; the CI matrix runs the suite on Redis 7.0.
MIN_VERSION = (7, 0)

#: Timed PINGs per server, after one that opens the connection; the median is reported.
PING_SAMPLES = 5


@dataclass(frozen=True)
class Need:
    """One command a layer sends, with a sample call for ``ACL DRYRUN``.

    ``sample`` is the call's arguments after the command name; the words ``<queue>``,
    ``<wake>``, ``<group>``, ``<channel>`` and ``<pattern>`` stand for names under the
    configured prefix, so key and channel patterns of the ACL are checked too.
    """

    command: str
    sample: tuple[str, ...] = ()
    #: The layer option that makes the layer send it; ``None`` means always. A refusal of a
    #: command whose option is not set is a warning, not a problem.
    option: str | None = None

    def call(self, names: Mapping[str, str]) -> tuple[str, ...]:
        return (*self.command.split(), *(names.get(word, word) for word in self.sample))


@dataclass(frozen=True)
class AclPlan:
    """The commands to ask about, the names to ask with, and the options in use."""

    needs: tuple[Need, ...]
    names: Mapping[str, str]
    options_set: frozenset[str] = frozenset()


@dataclass
class NodeReport:
    address: str
    role: str = "-"
    reachable: bool = False
    version: str | None = None
    rtt_ms: float | None = None
    #: ``ok``, ``denied``, ``unknown`` or ``-`` (not asked: a Sentinel, or unreachable).
    acl: str = "-"
    acl_user: str | None = None
    denied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class EntryReport:
    entry: str
    target: str
    kind: str
    nodes: list[NodeReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def all_problems(self) -> list[str]:
        return self.problems + [p for node in self.nodes for p in node.problems]

    def all_warnings(self) -> list[str]:
        return self.warnings + [w for node in self.nodes for w in node.warnings]


# --- one server -----------------------------------------------------------------------------


async def probe_server(
    link: Link, plan: AclPlan, *, primary_expected: bool, cluster: bool = False
) -> NodeReport:
    """Everything ``check`` asks one data server; never raises for the server's sake."""
    report = NodeReport(link.address)
    try:
        if not await _round_trip(link, report):
            return report
        await _read_info(link, report, primary_expected=primary_expected)
        if cluster:
            await _read_cluster_state(link, report)
        await _check_acl(link, plan, report)
    except FAILURES as error:
        report.problems.append(f"failed: {describe_error(error)}")
    return report


async def _round_trip(link: Link, report: NodeReport) -> bool:
    """Connect with a first PING, then time a few; ``False`` when the server is unreachable."""
    try:
        await link.call("PING")
    except AuthenticationError as error:  # a ConnectionError: the server answered, though
        report.reachable = True
        report.problems.append(f"cannot log in: {describe_error(error)}")
        return False
    except UNREACHABLE as error:
        report.problems.append(f"cannot connect: {describe_error(error)}")
        return False
    except ResponseError as error:  # it answered, but refused PING (ACL)
        report.reachable = True
        report.problems.append(f"PING refused: {describe_error(error)}")
        return True
    report.reachable = True
    samples = []
    for _ in range(PING_SAMPLES):
        start = time.perf_counter()
        await link.call("PING")
        samples.append((time.perf_counter() - start) * 1000)
    report.rtt_ms = round(statistics.median(samples), 3)
    return True


async def _read_info(link: Link, report: NodeReport, *, primary_expected: bool) -> None:
    try:
        info = await link.call("INFO", "server", "replication")
    except ResponseError as error:
        report.warnings.append(f"version and role unknown (INFO refused: {error})")
        return
    report.version = _version_of(info)
    role = str(info.get("role", ""))
    report.role = {"master": "primary", "slave": "replica"}.get(role, role or "?")
    if report.version is not None and _too_old(report.version):
        report.problems.append(
            f"{report.version} is too old: the layer's blocking pop, BZMPOP, needs "
            f"{'.'.join(map(str, MIN_VERSION))} or later"
        )
    if primary_expected and report.role == "replica":
        report.problems.append("is a replica: the layer writes to this server, a replica refuses")


def _version_of(info: Mapping[str, Any]) -> str | None:
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    if "redis_version" in info:
        return f"redis {info['redis_version']}"
    return None


def _too_old(version: str) -> bool:
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return len(numbers) == 2 and numbers < MIN_VERSION


async def _read_cluster_state(link: Link, report: NodeReport) -> None:
    try:
        reply = await link.call("CLUSTER", "INFO")
    except ResponseError as error:
        report.warnings.append(f"cluster_state unknown (CLUSTER INFO refused: {error})")
        return
    fields = dict(line.split(":", 1) for line in text(reply).split() if ":" in line)
    state = fields.get("cluster_state", "?")
    report.notes.append(f"cluster_state {state}")
    if state != "ok":
        report.problems.append(f"cluster_state is {state}: the cluster refuses commands")


async def _check_acl(link: Link, plan: AclPlan, report: NodeReport) -> None:
    """Ask the server whether the current user may send each command of ``plan``."""
    try:
        user = text(await link.call("ACL", "WHOAMI"))
    except ResponseError as error:
        _acl_unknown(report, "ACL WHOAMI", error)
        return
    report.acl_user = user
    calls: list[Sequence[Arg]] = [("ACL", "DRYRUN", user, *n.call(plan.names)) for n in plan.needs]
    replies = await link.batch(calls)
    errors = [reply for reply in replies if isinstance(reply, Exception)]
    if errors:
        _acl_unknown(report, "ACL DRYRUN", errors[0])
        return
    report.acl = "ok"
    for need, reply in zip(plan.needs, replies, strict=True):
        answer = text(reply)
        if answer == "OK":
            continue
        report.denied.append(need.command)
        message = f"ACL: user {user!r} may not run {need.command}: {answer}"
        if need.option is None or need.option in plan.options_set:
            report.acl = "denied"
            report.problems.append(message)
        else:
            report.warnings.append(f"{message} (needed only with {need.option})")


def _acl_unknown(report: NodeReport, command: str, error: BaseException) -> None:
    report.acl = "unknown"
    if isinstance(error, NoPermissionError):
        report.warnings.append(f"ACL: unknown ({command} not allowed)")
    else:
        report.warnings.append(f"ACL: unknown ({command}: {describe_error(error)})")


# --- hosts entries --------------------------------------------------------------------------


async def check_entry(index: int, host: Host, plan: AclPlan) -> EntryReport:
    where = f"hosts[{index}]"
    if isinstance(host, ClusterHost):
        return await _check_cluster(EntryReport(where, host.describe(), "cluster"), host, plan)
    if isinstance(host, SentinelHost):
        return await _check_sentinel(EntryReport(where, host.describe(), "sentinel"), host, plan)
    return await _check_server(EntryReport(where, host.describe(), "server"), host, plan)


async def _check_server(entry: EntryReport, host: ServerHost, plan: AclPlan) -> EntryReport:
    shard = Shard(host)
    try:
        link = ClientLink(shard.client, host.describe())
        entry.nodes.append(await probe_server(link, plan, primary_expected=True))
    finally:
        await shard.aclose()
    return entry


async def _check_sentinel(entry: EntryReport, host: SentinelHost, plan: AclPlan) -> EntryReport:
    """Each Sentinel's view of the primary, then the primary the layer would find."""
    shard = Shard(host)
    manager = cast(SentinelConnectionPool, shard.pool).sentinel_manager
    try:
        links = [
            ClientLink(client, f"{address[0]}:{address[1]}")
            for address, client in zip(host.sentinels, manager.sentinels, strict=True)
        ]
        views = await asyncio.gather(*(_probe_sentinel(link, host, manager) for link in links))
        entry.nodes.extend(report for report, _ in views)
        named = {address for _, address in views if address is not None}
        if len(named) > 1:
            entry.problems.append(
                f"the Sentinels disagree on the primary of {host.master_name!r}: "
                + ", ".join(sorted(named))
            )
        try:
            found = await manager.discover_master(host.master_name)
        except FAILURES as error:
            entry.problems.append(f"no primary found: {describe_error(error)}")
            return entry
        link = ClientLink(shard.client, f"{text(found[0])}:{found[1]}")
        primary = await probe_server(link, plan, primary_expected=True)
        primary.notes.append(f"primary of {host.master_name!r}")
        entry.nodes.append(primary)
    finally:
        await shard.aclose()
    return entry


async def _probe_sentinel(
    link: ClientLink, host: SentinelHost, manager: Any
) -> tuple[NodeReport, str | None]:
    """A Sentinel's reachability and which primary it names (``SENTINEL MASTERS``, the
    command valkey-py's discovery sends)."""
    report = NodeReport(link.address, role="sentinel")
    try:
        if not await _round_trip(link, report):
            return report, None
        info = await link.call("INFO", "server")
        report.version = _version_of(info)
        masters = await link.call("SENTINEL MASTERS")
    except FAILURES as error:
        report.problems.append(f"failed: {describe_error(error)}")
        return report, None
    state = masters.get(host.master_name)
    if state is None:
        report.problems.append(f"does not monitor {host.master_name!r}")
        return report, None
    address = f"{state['ip']}:{state['port']}"
    if not manager.check_master_state(state, host.master_name):
        report.problems.append(
            f"reports {host.master_name!r} at {address} as unusable (flags {state.get('flags')})"
        )
        return report, None
    report.notes.append(f"{host.master_name!r} at {address}")
    return report, address


async def _check_cluster(entry: EntryReport, host: ClusterHost, plan: AclPlan) -> EntryReport:
    """Every node the cluster knows, primaries and replicas, each asked directly."""
    client = build_cluster(host)
    nodes: list[ClusterNode] = []
    try:
        try:
            await client.initialize()
        except FAILURES as error:
            entry.problems.append(f"cannot use the cluster: {describe_error(error)}")
            return entry
        members = await _cluster_members(client, entry)
        options = {**client.nodes_manager.connection_kwargs, "retry": one_attempt()}
        nodes = [ClusterNode(member.host, member.port, **options) for member in members]
        reports = await asyncio.gather(
            *(
                probe_server(NodeLink(node), plan, primary_expected=False, cluster=True)
                for node in nodes
            )
        )
        for member, report in zip(members, reports, strict=True):
            _compare_role(member, report)
            entry.nodes.append(report)
    finally:
        await asyncio.gather(*(node.disconnect() for node in nodes))
        await client.aclose()
    return entry


@dataclass(frozen=True)
class _Member:
    host: str
    port: int
    role: str
    health: str
    slots: str


async def _cluster_members(client: ValkeyCluster, entry: EntryReport) -> list[_Member]:
    """The nodes ``CLUSTER SHARDS`` lists; the client's primaries if no node answers it."""
    tls = issubclass(client.nodes_manager.connection_kwargs["connection_class"], SSLConnection)
    errors: list[str] = []
    for node in client.get_primaries():
        try:
            shards = await node.execute_command("CLUSTER", "SHARDS")
        except FAILURES as error:
            errors.append(f"{node.name}: {describe_error(error)}")
            continue
        return [member for shard in shards for member in _shard_members(shard, tls=tls)]
    entry.warnings.append("replicas not listed, CLUSTER SHARDS failed (" + "; ".join(errors) + ")")
    return [
        _Member(node.host, int(node.port), "primary", "?", "") for node in client.get_primaries()
    ]


def _shard_members(shard: Sequence[Any], *, tls: bool) -> list[_Member]:
    """The nodes of one ``CLUSTER SHARDS`` entry (RESP2: flat lists of names and values)."""
    fields = _pairs(shard)
    ranges = list(fields.get("slots", []))
    slots = ",".join(f"{start}-{end}" for start, end in zip(ranges[::2], ranges[1::2], strict=True))
    members = []
    for raw in fields.get("nodes", []):
        node = _pairs(raw)
        endpoint = text(node.get("endpoint", b""))
        address = endpoint if endpoint not in ("", "?") else text(node.get("ip", b""))
        port = node.get("tls-port") if tls and "tls-port" in node else node.get("port")
        role = "primary" if text(node.get("role", b"")) == "master" else "replica"
        members.append(
            _Member(address, int(port or 0), role, text(node.get("health", b"?")), slots)
        )
    return members


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {text(name): value for name, value in zip(flat[::2], flat[1::2], strict=True)}


def _compare_role(member: _Member, report: NodeReport) -> None:
    if member.role == "primary" and member.slots:
        report.notes.append(f"slots {member.slots}")
    if member.health == "fail":
        report.problems.append("the cluster marks this node as failed")
    if report.reachable and report.role not in ("-", "?", member.role):
        report.warnings.append(f"the cluster lists it as {member.role}, it says {report.role}")
    if report.role in ("-", "?"):
        report.role = member.role


async def check_all(hosts: Sequence[Host], plan: AclPlan) -> list[EntryReport]:
    return list(
        await asyncio.gather(*(check_entry(index, host, plan) for index, host in enumerate(hosts)))
    )


# --- output ---------------------------------------------------------------------------------


def as_json(entries: Sequence[EntryReport], header: Mapping[str, Any]) -> dict[str, Any]:
    """The report for machines: what the human table shows, field by field."""
    problems = sum(len(entry.all_problems()) for entry in entries)
    return {
        **header,
        "ok": problems == 0,
        "problems": problems,
        "warnings": sum(len(entry.all_warnings()) for entry in entries),
        "entries": [dataclasses.asdict(entry) for entry in entries],
    }


def render(entries: Sequence[EntryReport], title: str) -> str:
    """One table per ``hosts`` entry, each node's problems and warnings under its row."""
    lines = [title]
    for entry in entries:
        lines += ["", f"{entry.entry}: {entry.target} ({entry.kind})"]
        rows: list[tuple[str, ...]] = [("NODE", "ROLE", "VERSION", "PING", "ACL", "NOTES")]
        rows += [_row(node) for node in entry.nodes]
        details = [_details(node) for node in entry.nodes]
        for index, line in enumerate(table(rows, right=(3,))):
            lines.append("  " + line)
            if index:
                lines += details[index - 1]
        lines += [f"  problem: {problem}" for problem in entry.problems]
        lines += [f"  warning: {warning}" for warning in entry.warnings]
    problems = sum(len(entry.all_problems()) for entry in entries)
    warnings = sum(len(entry.all_warnings()) for entry in entries)
    nodes = sum(len(entry.nodes) for entry in entries)
    verdict = "OK" if problems == 0 else "FAILED"
    lines += [
        "",
        f"{verdict}: {plural(nodes, 'node')} checked, {plural(problems, 'problem')}, "
        f"{plural(warnings, 'warning')}",
    ]
    return "\n".join(lines)


def _row(node: NodeReport) -> tuple[str, ...]:
    acl = node.acl
    if node.acl == "ok" and node.acl_user is not None:
        acl = f"ok ({node.acl_user})"
    elif node.acl == "denied":
        acl = "DENIED " + ",".join(node.denied)
    return (
        node.address,
        node.role,
        node.version or "-",
        "-" if node.rtt_ms is None else f"{node.rtt_ms:.2f} ms",
        acl,
        "; ".join(node.notes),
    )


def _details(node: NodeReport) -> list[str]:
    return [f"    problem: {p}" for p in node.problems] + [
        f"    warning: {w}" for w in node.warnings
    ]
