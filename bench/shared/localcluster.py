"""Private Valkey Clusters on loopback for the benchmark, on the standard library only.

Each node is a ``valkey-server`` with ``cluster-enabled yes``, an explicit ``cluster-port``
(the default bus port, port + 10000, may be taken or out of range) and a short
``cluster-node-timeout``, so a failover completes in about two seconds, as in
``tests/support/cluster.py``. The nodes are joined by hand (``CLUSTER ADDSLOTSRANGE``,
``MEET``, ``REPLICATE``) rather than by ``valkey-cli --cluster create``, which refuses fewer
than three primaries: the benchmark compares a one-primary cluster with a three-primary one.

Primary ``i`` of ``n`` serves the slots ``s`` with ``s * n // 16384 == i``
(:func:`primary_of_slot`), so the benchmark can choose channel names whose queues spread evenly
over the primaries without asking a server (:func:`key_slot` is the cluster's hash).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from shared.resp import Reply, RespClient, ServerError

HOST = "127.0.0.1"
SLOTS = 16384
NODE_TIMEOUT_MS = 1000
T = TypeVar("T")


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the hash of Valkey Cluster's key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The slot of ``key``, honouring a ``{hash tag}`` as the server does."""
    data = key.encode()
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


def primary_of_slot(slot: int, primaries: int) -> int:
    """Which of ``primaries`` equal slot ranges ``slot`` falls in (as :class:`LocalCluster`
    assigns them)."""
    return slot * primaries // SLOTS


def slot_range(index: int, primaries: int) -> tuple[int, int]:
    """First and last slot of primary ``index``: the slots with ``primary_of_slot == index``."""
    first = -(-index * SLOTS // primaries)
    last = -(-(index + 1) * SLOTS // primaries) - 1
    return first, last


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that was free a moment ago, never one handed out before in this
    process (the kernel may offer a just-closed port again)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no free loopback port")


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = predicate()
        except (OSError, ServerError) as error:
            last = error
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from last
        time.sleep(interval)


def die_with_parent() -> None:
    """Run in the forked child: SIGKILL when the benchmark dies (Linux), so no node outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Node:
    """One ``valkey-server`` of a cluster; keeps its ports and directory across restarts."""

    def __init__(self, name: str, directory: Path, *, announce: bool = False) -> None:
        self.name = name
        self.port = free_port()
        self.bus_port = free_port()
        #: With ``announce``, the node tells clients and replicas to use another port (where
        #: a proxy forwards to ``port``): ``cluster-announce-port``.
        self.announce_port = free_port() if announce else None
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Node {self.name} :{self.port}>"

    @property
    def client_port(self) -> int:
        """The port clients and replicas use: the announced one, else the node's own."""
        return self.announce_port or self.port

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the node for the first time; on new ports if its ports turn out to be taken
        (another process may have bound them since they were chosen), unless it announces a
        port (something else already forwards that one to ``port``)."""
        for attempt in range(3):
            self.spawn()
            try:
                self.wait_ready()
                return
            except (TimeoutError, RuntimeError):
                if attempt == 2 or self.announce_port is not None:
                    raise
            self.port, self.bus_port = free_port(), free_port()

    def spawn(self) -> None:
        """Start the process without waiting for it to answer. Call it from the main thread:
        the node is killed when the thread that started it ends (``PR_SET_PDEATHSIG``)."""
        command = ["valkey-server", "--bind", HOST, "--port", str(self.port)]
        command += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        command += ["--logfile", "valkey.log", "--daemonize", "no"]
        command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        command += ["--cluster-port", str(self.bus_port)]
        if self.announce_port is not None:
            command += ["--cluster-announce-port", str(self.announce_port)]
        command += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        # A replica whose primary died takes over at once; replicas stay where they are put.
        command += ["--cluster-replica-validity-factor", "0"]
        command += ["--cluster-allow-replica-migration", "no"]
        # A restarted node resyncs at once (the default waits 5 s for more replicas).
        command += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def wait_ready(self) -> None:
        """Until the node answers ``PING`` (may run in any thread)."""

        def ready() -> bool:
            if not self.running:
                log = self.directory / "valkey.log"
                tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
                raise RuntimeError(f"{self.name} exited; its log ends:\n{tail}")
            return self.command("PING") == "PONG"

        try:
            wait_for(ready, 10, f"{self.name} to start")
        except (TimeoutError, RuntimeError):
            self.kill()
            raise

    def command(self, *args: str | bytes | int | float) -> Reply:
        """One command on a fresh connection."""
        with RespClient(HOST, self.port, timeout=10) as client:
            return client.command(*args)

    def text(self, *args: str | bytes | int | float) -> str:
        reply = self.command(*args)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def info(self, section: str) -> dict[str, str]:
        with RespClient(HOST, self.port, timeout=10) as client:
            return client.info(section)

    def cluster_info(self) -> dict[str, str]:
        text = self.text("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or handed over."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalCluster:
    """``primaries`` primaries with ``replicas`` replicas each, on loopback, in a temporary
    directory removed by :meth:`stop`."""

    def __init__(
        self, primaries: int, replicas: int = 0, name: str = "cluster", *, announce: bool = False
    ) -> None:
        """With ``announce``, every node announces a port of its own (``Node.announce_port``),
        on which something else (a proxy) must forward to the node before :meth:`start`."""
        self.primary_count = primaries
        self.replicas_per_primary = replicas
        self._tempdir = tempfile.TemporaryDirectory(prefix=f"channels-valkey-bench-{name}-")
        root = Path(self._tempdir.name)
        self.nodes = [
            Node(f"{name}-{i}", root / f"node{i}", announce=announce)
            for i in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """``cluster://host:port,host:port,...``: every node, as the benchmark passes it on."""
        return "cluster://" + ",".join(f"{HOST}:{node.client_port}" for node in self.nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, node.client_port) for node in self.nodes]

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self) -> None:
        primaries = self.nodes[: self.primary_count]
        for index, node in enumerate(primaries):
            first, last = slot_range(index, self.primary_count)
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            self.nodes[0].command("CLUSTER", "MEET", HOST, node.port, node.bus_port)
        count = len(self.nodes)

        def all_met() -> bool:
            for node in self.nodes:
                lines = node.text("CLUSTER", "NODES").splitlines()
                if len(lines) != count or any("handshake" in line for line in lines):
                    return False
            return True

        wait_for(all_met, 30, "every node to know every other")
        replicas = self.nodes[self.primary_count :]
        for index, replica in enumerate(replicas):
            primary = primaries[index % self.primary_count]
            primary_id = primary.text("CLUSTER", "MYID")

            def knows_primary(replica: Node = replica, primary_id: str = primary_id) -> bool:
                return primary_id in replica.text("CLUSTER", "NODES")

            # The replica must know the primary as such before it can follow it.
            wait_for(knows_primary, 30, f"{replica.name} to learn of its primary")
            replica.command("CLUSTER", "REPLICATE", primary_id)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node reports ``cluster_state:ok`` with every slot served, the
        primaries are as many as configured, and every replica is in sync with its primary."""

        def healthy() -> bool:
            serving = 0
            for node in self.nodes:
                if not node.running:
                    continue
                info = node.cluster_info()
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
                replication = node.info("replication")
                if replication.get("role") == "slave":
                    if replication.get("master_link_status") != "up":
                        return False
                else:
                    serving += 1
            return serving == self.primary_count

        wait_for(healthy, timeout, "the cluster to be healthy")

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.running]

    def primaries(self) -> list[Node]:
        return [n for n in self.running() if n.info("replication").get("role") == "master"]

    def node_for(self, key: str) -> Node:
        """The primary that serves ``key`` now, as a running node reports it."""
        slot = key_slot(key)
        for admin in self.running():
            try:
                ranges = admin.command("CLUSTER", "SLOTS")
            except (OSError, ServerError):
                continue
            assert isinstance(ranges, list)
            for entry in ranges:
                assert isinstance(entry, list)
                first, last, primary = entry[0], entry[1], entry[2]
                assert isinstance(first, int)
                assert isinstance(last, int)
                assert isinstance(primary, list)
                if first <= slot <= last:
                    port = primary[1]
                    return next(node for node in self.nodes if node.client_port == port)
        raise LookupError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        self._tempdir.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
