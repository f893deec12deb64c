"""A real Valkey Cluster for the tests: primaries and replicas joined by ``valkey-cli``.

Each node is a :class:`servers.ValkeyServer` started with ``cluster-enabled yes`` and an
explicit ``cluster-port`` (the default bus port, port + 10000, may be taken or out of range).
``cluster-node-timeout`` is short so a failover completes in a couple of seconds.
"""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Any

import valkey

from support.servers import (
    HOST,
    STARTUP_TIMEOUT,
    ServerError,
    ValkeyServer,
    free_port,
    require_binary,
    server_command,
    wait_for,
)

NODE_TIMEOUT_MS = 1000
SLOTS = 16384


class ValkeyClusterGroup:
    """``primaries`` primaries with ``replicas`` replicas each, all on loopback."""

    def __init__(self, *, primaries: int = 3, replicas: int = 1) -> None:
        self.replicas_per_primary = replicas
        self.nodes = [
            ValkeyServer(
                name=f"cluster{i}",
                extra_config=[
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {NODE_TIMEOUT_MS}",
                    f"cluster-port {free_port()}",
                    # A replica whose primary died takes over at once, without waiting.
                    "cluster-replica-validity-factor 0",
                    "cluster-allow-replica-migration no",
                ],
            )
            for i in range(primaries * (1 + replicas))
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes if node.running]

    def start(self) -> ValkeyClusterGroup:
        try:
            for node in self.nodes:
                node.start()
            cli = require_binary(server_command("cli"))
            addresses = [f"{HOST}:{node.port}" for node in self.nodes]
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    str(self.replicas_per_primary),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _info(self, node: ValkeyServer) -> dict[str, str]:
        raw: Any = node.client().execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok`` with all slots served, and every
        replica of a live primary is in sync."""

        def healthy() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                info = self._info(node)
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
                replication = node.client().info("replication")
                if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                    return False
            return True

        wait_for(healthy, timeout=timeout, interval=0.05, describe="the cluster to be healthy")

    def primaries(self) -> list[ValkeyServer]:
        return [n for n in self.nodes if n.running and n.role() == "master"]

    def node_for(self, key: str) -> ValkeyServer:
        """The primary that serves ``key`` now, as the cluster itself reports it."""
        admin: Any = self.primaries()[0].client()
        slot = int(admin.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, primary, *_replicas in admin.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise ServerError(f"no primary serves slot {slot}")

    def kill_primary_of(self, key: str, *, sync_replica: bool = True) -> ValkeyServer:
        """SIGKILL the primary serving ``key`` and wait until its replica took over.

        With ``sync_replica`` a ``WAIT`` first makes sure the replica has every write, so no
        data is lost; without, the kill may lose the last writes, as a real crash does.
        """
        victim = self.node_for(key)
        if sync_replica:
            victim.client().execute_command("WAIT", self.replicas_per_primary, 5000)
        victim.kill()
        wait_for(
            lambda: self.node_for(key) is not victim,
            timeout=STARTUP_TIMEOUT * 3,
            interval=0.05,
            describe=f"a replica to take over from {victim.name}",
        )
        self.wait_healthy()
        return victim

    def move_slot_of(self, key: str) -> ValkeyServer:
        """Migrate the slot of ``key``, with its keys, to another primary (as resharding does)."""
        source = self.node_for(key)
        target = next(n for n in self.primaries() if n is not source)
        src: Any = source.client()
        dst: Any = target.client()
        slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
        source_id = src.execute_command("CLUSTER", "MYID").decode()
        target_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
        for node in (target, source, *(n for n in self.primaries() if n not in (source, target))):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_for(
            lambda: all(self._serves(n, slot) == target.port for n in self.primaries()),
            timeout=STARTUP_TIMEOUT,
            interval=0.05,
            describe=f"every primary to agree that {target.name} serves slot {slot}",
        )
        return target

    @staticmethod
    def _serves(node: ValkeyServer, slot: int) -> int | None:
        admin: Any = node.client()
        for start, end, primary, *_replicas in admin.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        return None

    def flushall(self) -> None:
        for node in self.primaries():
            node.flushall()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> ValkeyClusterGroup:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def cluster_client(group: ValkeyClusterGroup) -> valkey.ValkeyCluster:
    host, port = group.startup_nodes[0]
    return valkey.ValkeyCluster(host=host, port=port)
