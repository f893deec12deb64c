"""The command-line tool against real servers: ``check`` and ``inspect``, in-process through
``main(argv)``, plus one run as ``python -m channels_valkey``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cli import fill, hosts_args, run_cli
from support.servers import SERVER_KIND, SentinelGroup, Topology, ValkeyServer, free_port

#: Nodes ``check`` reports per topology: a Sentinel entry is its Sentinel and the primary;
#: a cluster is its three primaries and three replicas.
NODES = {"standalone": 1, "sharded": 3, "unix": 1, "tls": 1, "sentinel": 2, "cluster": 6}


@pytest.fixture
def acl_user(valkey_server: ValkeyServer) -> Iterator[Any]:
    """Creates ACL users on the standalone server (``acl_user(name, *rules)`` returns a URL
    that logs in as that user), and deletes them afterwards."""
    admin: Any = valkey_server.client()
    created: list[str] = []

    def create(*rules: str) -> str:
        name = f"cli{uuid.uuid4().hex[:8]}"
        admin.execute_command("ACL", "SETUSER", name, "on", ">pw", *rules)
        created.append(name)
        return f"valkey://{name}:pw@{valkey_server.host}:{valkey_server.port}"

    yield create
    if created:
        admin.execute_command("ACL", "DELUSER", *created)


# --- check ----------------------------------------------------------------------------------


def test_help_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "channels_valkey", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "python -m channels_valkey" in result.stdout
    assert "check" in result.stdout
    assert "inspect" in result.stdout


#: Every deployment shape; the ``python-parser`` topology changes nothing the tool looks at (and
#: a parser class cannot be given on the command line).
every_deployment = pytest.mark.parametrize(
    "topology", ["standalone", "sharded", "unix", "tls", "sentinel", "cluster"], indirect=True
)


@every_deployment
def test_check_passes_on_every_topology(
    topology: Topology, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "check", *hosts_args(topology.hosts))
    assert code == 0, out
    count = NODES[topology.name]
    assert f"OK: {count} node{'s' if count > 1 else ''} checked, 0 problems" in out

    code, out, _ = run_cli(capsys, "check", "--json", *hosts_args(topology.hosts))
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    assert report["layer"] == "core"
    assert report["prefix"] == "asgi"
    assert len(report["entries"]) == len(topology.hosts)
    nodes = [node for entry in report["entries"] for node in entry["nodes"]]
    assert len(nodes) == NODES[topology.name]
    for node in nodes:
        assert node["reachable"] is True
        assert node["version"].startswith(f"{SERVER_KIND} ")
        assert node["rtt_ms"] >= 0
        assert node["problems"] == []
        if node["role"] != "sentinel":
            assert node["acl"] == "ok"
            assert node["acl_user"] == "default"


def test_check_cluster_lists_every_node_with_its_role(
    valkey_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = {"cluster": True, "startup_nodes": valkey_cluster.startup_nodes[:1]}
    code, out, _ = run_cli(capsys, "check", "--json", "--hosts", json.dumps(entry))
    assert code == 0, out
    (reported,) = json.loads(out)["entries"]
    assert reported["kind"] == "cluster"
    roles = Counter(node["role"] for node in reported["nodes"])
    assert roles == {"primary": 3, "replica": 3}
    ports = {int(node["address"].rsplit(":", 1)[1]) for node in reported["nodes"]}
    assert ports == {node.port for node in valkey_cluster.nodes}
    for node in reported["nodes"]:
        assert "cluster_state ok" in node["notes"]


def test_check_sentinel_reports_the_sentinels_and_the_primary(
    valkey_sentinel: SentinelGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = {"sentinels": valkey_sentinel.sentinels, "master_name": valkey_sentinel.master_name}
    code, out, _ = run_cli(capsys, "check", "--hosts", json.dumps(entry))
    assert code == 0, out
    primary = f"{valkey_sentinel.primary.host}:{valkey_sentinel.primary.port}"
    sentinel = f"{valkey_sentinel.sentinel.host}:{valkey_sentinel.sentinel.port}"
    assert f"'mymaster' at {primary}" in out
    assert sentinel in out
    assert "primary of 'mymaster'" in out


def test_check_reports_a_dead_sentinel_beside_a_live_one(
    valkey_sentinel: SentinelGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = ["127.0.0.1", free_port()]
    entry = {"sentinels": [*valkey_sentinel.sentinels, dead], "master_name": "mymaster"}
    code, out, _ = run_cli(capsys, "check", "--json", "--hosts", json.dumps(entry))
    assert code == 1
    live, down, primary = json.loads(out)["entries"][0]["nodes"]
    assert live["problems"] == []
    assert down["address"] == f"127.0.0.1:{dead[1]}"
    assert down["problems"][0].startswith("cannot connect: ")
    assert primary["role"] == "primary"
    assert primary["acl"] == "ok"


def test_check_reports_a_dead_cluster_node(
    cluster_failover_group: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    replica = next(node for node in cluster_failover_group.nodes if node.role() == "slave")
    entry = {"cluster": True, "startup_nodes": [cluster_failover_group.primaries()[0].address]}
    replica.kill()
    code, out, _ = run_cli(capsys, "check", "--json", "--hosts", json.dumps(entry))
    assert code == 1
    nodes = json.loads(out)["entries"][0]["nodes"]
    assert len(nodes) == 6
    (dead,) = [node for node in nodes if not node["reachable"]]
    assert dead["address"] == f"127.0.0.1:{replica.port}"
    assert dead["role"] == "replica"
    assert dead["problems"][0].startswith("cannot connect: ")


def test_check_tls_without_the_client_certificate(
    valkey_tls: ValkeyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = {"address": valkey_tls.tls_url, **valkey_tls.ssl_kwargs(client_cert=False)}
    code, out, _ = run_cli(capsys, "check", "--hosts", json.dumps(entry))
    assert code == 1
    assert "cannot connect: " in out


def test_check_names_the_command_the_acl_refuses(
    acl_user: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = acl_user("~*", "&*", "+@all", "-bzmpop")
    code, out, _ = run_cli(capsys, "check", "--hosts", url)
    assert code == 1
    assert "DENIED BZMPOP" in out
    assert "may not run BZMPOP" in out
    assert "FAILED" in out
    assert ":pw@" not in out  # the password is masked

    code, out, _ = run_cli(capsys, "check", "--json", "--hosts", url)
    assert code == 1
    (node,) = json.loads(out)["entries"][0]["nodes"]
    assert node["acl"] == "denied"
    assert node["denied"] == ["BZMPOP"]


def test_check_refuses_keys_outside_the_users_key_patterns(
    acl_user: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = acl_user("~other*", "&*", "+@all")
    code, out, _ = run_cli(capsys, "check", "--json", "--hosts", url)
    assert code == 1
    (node,) = json.loads(out)["entries"][0]["nodes"]
    assert {"EVALSHA", "BZMPOP", "ZADD", "ZRANGEBYSCORE", "UNLINK"} <= set(node["denied"])
    assert "SCAN" not in node["denied"]  # SCAN takes no key; its MATCH is not checked
    assert any("'asgichannels_valkey.check' key" in p for p in node["problems"])

    code, out, _ = run_cli(capsys, "check", "--hosts", url, "--prefix", "other")
    assert code == 0, out


def test_check_with_a_wrong_password(
    valkey_server: ValkeyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"valkey://nobody:wrong@{valkey_server.host}:{valkey_server.port}"
    code, out, _ = run_cli(capsys, "check", "--hosts", url)
    assert code == 1
    assert "cannot log in: invalid username-password pair" in out
    assert "wrong" not in out


def test_check_without_acl_dryrun_warns(acl_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = acl_user("~*", "&*", "+@all", "-acl|dryrun")
    code, out, _ = run_cli(capsys, "check", "--hosts", url)
    assert code == 0, out
    assert "ACL: unknown (ACL DRYRUN not allowed)" in out
    assert "1 warning" in out


def test_wait_is_needed_only_with_wait_for_replicas(
    acl_user: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = acl_user("~*", "&*", "+@all", "-wait")
    code, out, _ = run_cli(capsys, "check", "--hosts", url)
    assert code == 0, out
    assert "needed only with wait_for_replicas" in out

    module = write_settings(
        tmp_path,
        monkeypatch,
        {"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": {"hosts": [url]}},
        waiting={
            "BACKEND": "channels_valkey.core.ValkeyChannelLayer",
            "CONFIG": {"hosts": [url], "wait_for_replicas": 1},
        },
    )
    code, out, _ = run_cli(capsys, "check", "--settings", module)
    assert code == 0, out
    code, out, _ = run_cli(capsys, "check", "--settings", module, "--alias", "waiting")
    assert code == 1
    assert "may not run WAIT" in out


def test_check_unreachable_host(
    valkey_server: ValkeyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"valkey://127.0.0.1:{free_port()}"
    code, out, _ = run_cli(capsys, "check", "--hosts", valkey_server.url, "--hosts", dead)
    assert code == 1
    line = next(line for line in out.splitlines() if "cannot connect" in line)
    assert "Connect" in line
    assert f"hosts[1]: {dead} (server)" in out
    assert "FAILED: 2 nodes checked, 1 problem" in out


def test_check_unreachable_sentinel_and_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    sentinel = {"sentinels": [["127.0.0.1", free_port()]], "master_name": "mymaster"}
    cluster = {"cluster": True, "startup_nodes": [["127.0.0.1", free_port()]]}
    code, out, _ = run_cli(capsys, "check", "--hosts", json.dumps(sentinel))
    assert code == 1
    assert "cannot connect" in out
    assert "no primary found" in out
    code, out, _ = run_cli(capsys, "check", "--hosts", json.dumps(cluster), "--timeout", "1")
    assert code == 1
    assert "cannot use the cluster" in out


def test_check_a_replica_as_a_plain_host_is_a_problem(
    valkey_sentinel: SentinelGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "check", "--hosts", valkey_sentinel.replica.url)
    assert code == 1
    assert "is a replica" in out


# --- inspect --------------------------------------------------------------------------------


@every_deployment
def test_inspect_on_every_topology(topology: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    process = asyncio.run(fill(topology.hosts))
    code, out, err = run_cli(capsys, "inspect", "--json", *hosts_args(topology.hosts))
    assert code == 0, err
    stats = json.loads(out)
    assert all(
        set(stat) == {"kind", "name", "key", "server", "size", "oldest_age_seconds"}
        for stat in stats
    )
    totals: Counter[tuple[str, str]] = Counter()
    for stat in stats:
        totals[stat["kind"], stat["name"]] += stat["size"]
        assert 0 <= stat["oldest_age_seconds"] < 60
    # A normal channel's messages take the shards in turn: summed, they are all there.
    assert totals == {
        ("channel", "chat.room"): 3,
        ("process", process): 2,
        ("group", "room"): 2,
        ("group", "lobby"): 1,
    }
    sizes = [stat["size"] for stat in stats]
    assert sizes == sorted(sizes, reverse=True)
    if topology.name == "cluster":
        assert {stat["key"] for stat in stats} >= {"asgi{chat.room}", "asgi:group:{room}"}

    code, out, _ = run_cli(capsys, "inspect", *hosts_args(topology.hosts))
    assert code == 0
    header = out.splitlines()[0]
    assert header.split() == ["KIND", "NAME", "SIZE", "OLDEST", "SERVER"]
    assert "channel: " in out
    assert "group: 2, 3 members" in out


def test_inspect_classifies_every_kind_of_key(
    valkey_server: ValkeyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    valkey_server.flushall()
    admin: Any = valkey_server.client()
    admin.zadd("asgichat.room", {b"m1": 1.0, b"m2": 2.0})
    admin.zadd("asgichat.room$inflight", {b"m0": 0.5})  # a channels_redis in-flight backup
    admin.zadd("asgichat.room$wake:abc", {b"1": 0})  # a reader's wake key
    admin.zadd("asgi:group:room", {b"chat.room": 3.0})
    admin.set("asgi-not-a-queue", b"string")  # not a sorted set: not the layer's
    admin.zadd("other.queue", {b"m": 1.0})  # not under the prefix
    code, out, err = run_cli(capsys, "inspect", "--json", "--hosts", valkey_server.url)
    assert code == 0, err
    stats = {(stat["kind"], stat["name"]): stat for stat in json.loads(out)}
    assert set(stats) == {("channel", "chat.room"), ("inflight", "chat.room"), ("group", "room")}
    assert stats["channel", "chat.room"]["size"] == 2
    assert stats["channel", "chat.room"]["oldest_age_seconds"] > 1e9  # scored at 1.0: long ago
    assert stats["inflight", "chat.room"]["key"] == "asgichat.room$inflight"

    code, out, _ = run_cli(capsys, "inspect", "--hosts", valkey_server.url)
    assert "(1 internal wake key not listed)" in out
    assert "3 keys under prefix 'asgi' on 1 server" in out

    code, out, _ = run_cli(capsys, "inspect", "--hosts", valkey_server.url, "--prefix", "none")
    assert code == 0
    assert "0 keys under prefix 'none'" in out
    valkey_server.flushall()


def test_inspect_scans_pages_and_never_sends_keys(
    valkey_server: ValkeyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    valkey_server.flushall()
    admin: Any = valkey_server.client()
    with admin.pipeline(transaction=False) as pipe:
        for index in range(2500):
            pipe.zadd(f"asgic{index}", {b"m": 1.0})
        pipe.execute()
    valkey_server.reset_stats()
    code, out, _ = run_cli(capsys, "inspect", "--json", "--hosts", valkey_server.url)
    assert code == 0
    assert len(json.loads(out)) == 2500
    stats = valkey_server.commandstats()
    assert "keys" not in stats
    assert stats["scan"] >= 3  # COUNT 1000 a page
    assert stats["zcard"] == 2500
    valkey_server.flushall()


def test_inspect_unreachable_host(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"valkey://127.0.0.1:{free_port()}"
    code, out, err = run_cli(capsys, "inspect", "--hosts", dead)
    assert code == 1
    assert f"error: {dead}: " in err
    assert "0 keys" in out


# --- settings -------------------------------------------------------------------------------


def write_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default: Any, **others: Any
) -> str:
    """A settings module with ``CHANNEL_LAYERS``, importable by the returned name."""
    name = f"cli_settings_{uuid.uuid4().hex}"
    layers = {"default": default, **others}
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
            SECRET_KEY = "not secret"
            CHANNEL_LAYERS = {layers!r}
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_settings_core_and_pubsub(
    valkey_server: ValkeyServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = write_settings(
        tmp_path,
        monkeypatch,
        {
            "BACKEND": "channels_valkey.core.ValkeyChannelLayer",
            "CONFIG": {"hosts": [valkey_server.url], "prefix": "site"},
        },
        events={
            "BACKEND": "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
            "CONFIG": {"hosts": [valkey_server.url]},
        },
    )
    code, out, _ = run_cli(capsys, "check", "--json", "--settings", module)
    assert code == 0, out
    report = json.loads(out)
    assert (report["layer"], report["prefix"]) == ("core", "site")
    assert report["source"] == f"{module}.CHANNEL_LAYERS['default']"

    code, out, _ = run_cli(capsys, "check", "--settings", module, "--alias", "events")
    assert code == 0, out
    assert "pubsub layer" in out

    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", module)
    code, out, _ = run_cli(capsys, "inspect", "--json")
    assert code == 0
    assert json.loads(out) == []


def test_settings_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    module = write_settings(
        tmp_path,
        monkeypatch,
        {"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": {"hosts": "oops"}},
        redis={"BACKEND": "channels_redis.core.RedisChannelLayer"},
        options={"BACKEND": "channels_valkey.core.ValkeyChannelLayer", "CONFIG": {"expiry": 0}},
    )
    cases = [
        (["--settings", "no_such_settings_module"], "no settings module 'no_such_settings_module'"),
        (["--settings", module, "--alias", "nope"], "has no 'nope' (it has: 'default'"),
        (["--settings", module], "hosts must be a list of hosts"),
        (["--settings", module, "--alias", "redis"], "not a channels_valkey layer"),
        (["--settings", module, "--alias", "options"], "expiry must be a whole number"),
        (["--hosts", "http://example.com"], "URL scheme must be one of"),
        (["--hosts", "{bad json"], "is not valid JSON"),
        (["--settings", module, "--hosts", "valkey://localhost"], "not both"),
        ([], "give --settings or --hosts"),
    ]
    for args, message in cases:
        for command in ("check", "inspect"):
            code, out, err = run_cli(capsys, command, *args)
            assert code == 2, (args, out, err)
            assert message in err, (args, err)
            assert out == ""
