"""Fixtures that run the suite against real Valkey servers.

Session-scoped servers are started lazily (only when a test first asks for
them) and shared; tests must therefore leave them running and in their
original role. Tests that stop, restart or fail over a server use the
function-scoped fixtures, which give each test its own processes.

The ``hosts`` fixture is the heart of the behavioural suite: it is
parametrized over every deployment shape a user can put in
``CHANNEL_LAYERS[...]["CONFIG"]["hosts"]``, so one test body covers them all.

The servers themselves are in tests/support; the fixtures that build layers on them are in
tests/integration/conftest.py (unit tests start no server).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
from valkey._parsers import _AsyncRESP2Parser

from support.cluster import ValkeyClusterGroup
from support.servers import SentinelGroup, Topology, ValkeyServer


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Treat SIGTERM like Ctrl-C so fixtures still tear servers down.

    A CI timeout or ``kill`` would otherwise end the run without cleanup:
    the servers still die with the process (see tests/support/servers.py), but their
    temporary directories would be left behind.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


# --------------------------------------------------------------------------
# Session-scoped servers (shared; do not stop or reconfigure them)
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[ValkeyServer]:
    """A standalone server on ``127.0.0.1:<free port>``."""
    with ValkeyServer(name="standalone") as server:
        yield server


@pytest.fixture(scope="session")
def valkey_shards() -> Iterator[list[ValkeyServer]]:
    """Three independent standalone servers, as used for sharded ``hosts``."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(ValkeyServer(name=f"shard{i}")) for i in range(3)]


@pytest.fixture(scope="session")
def valkey_unix() -> Iterator[ValkeyServer]:
    """A server listening only on a unix socket (``.unix_path``; ``.port == 0``)."""
    with ValkeyServer(name="unix", unix_socket=True) as server:
        yield server


@pytest.fixture(scope="session")
def valkey_tls() -> Iterator[ValkeyServer]:
    """A server with a TLS port that REQUIRES a client certificate.

    ``.tls_url`` / ``.tls_port`` is the TLS listener, ``.tls`` holds the PEM
    paths (``ca_cert``, ``client_cert``, ``client_key``, ...) and
    ``.ssl_kwargs()`` the matching valkey-py keyword arguments. Requiring the
    client certificate (``tls-auth-clients yes``) proves that the layer passes
    ``ssl_certfile``/``ssl_keyfile`` through rather than dropping them. The
    plain ``.port`` stays open for admin use (flush, stats).
    """
    with ValkeyServer(name="tls", tls=True, tls_auth_clients="yes") as server:
        yield server


@pytest.fixture(scope="session")
def valkey_sentinel() -> Iterator[SentinelGroup]:
    """Primary + replica + Sentinel monitoring ``mymaster``. Read-only use:
    never kill or fail it over (use ``sentinel_failover_group`` for that)."""
    with SentinelGroup() as group:
        yield group


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyClusterGroup]:
    """Three primaries with a replica each. Read-only use: never kill or reshard it
    (use ``cluster_failover_group`` for that)."""
    with ValkeyClusterGroup() as group:
        yield group


# --------------------------------------------------------------------------
# Function-scoped servers (each test owns them, so it may break them)
# --------------------------------------------------------------------------


@pytest.fixture
def persistent_server() -> Iterator[ValkeyServer]:
    """A fresh server with ``appendonly yes`` + ``appendfsync always``.

    ``stop()``/``kill()`` then ``start()`` (or ``restart()``) keep the port
    and the data.
    """
    with ValkeyServer(name="persistent", persistence=True) as server:
        yield server


@pytest.fixture
def sentinel_failover_group() -> Iterator[SentinelGroup]:
    """A fresh Sentinel group that the test may fail over
    (``group.failover_by_killing_primary()``); torn down afterwards."""
    with SentinelGroup() as group:
        yield group


@pytest.fixture
def cluster_failover_group() -> Iterator[ValkeyClusterGroup]:
    """A fresh cluster the test may fail over or reshard; torn down afterwards."""
    with ValkeyClusterGroup() as group:
        yield group


# --------------------------------------------------------------------------
# The ``hosts`` matrix
# --------------------------------------------------------------------------

TOPOLOGIES = ["standalone", "sharded", "unix", "tls", "sentinel", "cluster", "python-parser"]


def _build_topology(name: str, request: pytest.FixtureRequest) -> Topology:
    if name == "standalone":
        server: ValkeyServer = request.getfixturevalue("valkey_server")
        return Topology(name, [server.url], [server])
    if name == "python-parser":
        # valkey-py's pure-Python reply parser, which it uses whenever libvalkey (a dependency,
        # so the parser of every other topology) cannot be imported. It has no public name.
        server = request.getfixturevalue("valkey_server")
        return Topology(
            name, [{"address": server.url, "parser_class": _AsyncRESP2Parser}], [server]
        )
    if name == "sharded":
        shards: list[ValkeyServer] = request.getfixturevalue("valkey_shards")
        # Every form a hosts entry may take, so parsing of each is covered.
        hosts: list[Any] = [
            shards[0].url,
            (shards[1].host, shards[1].port),
            {"address": shards[2].url},
        ]
        return Topology(name, hosts, list(shards))
    if name == "unix":
        server = request.getfixturevalue("valkey_unix")
        return Topology(name, [server.url], [server])
    if name == "tls":
        server = request.getfixturevalue("valkey_tls")
        return Topology(name, [{"address": server.tls_url, **server.ssl_kwargs()}], [server])
    if name == "sentinel":
        group: SentinelGroup = request.getfixturevalue("valkey_sentinel")
        hosts = [
            {
                "sentinels": list(group.sentinels),
                "master_name": group.master_name,
                "sentinel_kwargs": {},
            }
        ]
        return Topology(name, hosts, [group.primary])
    if name == "cluster":
        cluster: ValkeyClusterGroup = request.getfixturevalue("valkey_cluster")
        hosts = [{"cluster": True, "startup_nodes": cluster.startup_nodes}]
        return Topology(name, hosts, cluster.primaries())
    raise ValueError(f"unknown topology {name!r}")


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> Topology:
    """The current deployment shape, with every server emptied beforehand.

    FLUSHALL makes tests independent of each other; CONFIG RESETSTAT (done
    after the flush) makes ``commandstats()`` count only what the test itself
    caused (plus the RESETSTAT call itself).
    """
    topo = _build_topology(request.param, request)
    for server in topo.servers:
        server.flushall()
        server.reset_stats()
    return topo


@pytest.fixture
def hosts(topology: Topology) -> list[Any]:
    """The ``CONFIG["hosts"]`` value for the current topology (a fresh list)."""
    return topology.hosts


@pytest.fixture
def topology_servers(topology: Topology) -> list[ValkeyServer]:
    """The ``ValkeyServer`` primaries behind ``hosts``, in the same order."""
    return topology.servers


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """After a failure, say how to replay this test order.

    The order is random (pytest-randomly), and its seed is printed only in the header, which
    ``-q`` hides and a long log scrolls away; a failure that depends on the order is only
    reproducible with it.
    """
    seed = getattr(config.option, "randomly_seed", None)
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED) or seed is None:
        return
    if not isinstance(seed, int):  # "last"/"default" are resolved to an int by the plugin
        return
    terminalreporter.write_line(
        f"The tests ran in a random order; to replay it, add --randomly-seed={seed} "
        "to the same command"
    )
