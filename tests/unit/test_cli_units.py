"""The command-line tool's pure parts: key classification, the command lists, option parsing,
reply parsing and formatting. No server needed."""

from __future__ import annotations

from typing import Any

import pytest

from channels_valkey._cli import main as cli
from channels_valkey._cli.check import Need, _shard_members, _too_old, _version_of
from channels_valkey._cli.inspect import _first_score, classify, format_age
from channels_valkey._cli.links import for_diagnosis
from channels_valkey._cli.main import (
    CORE_NEEDS,
    PUBSUB_CLUSTER_NEEDS,
    PUBSUB_NEEDS,
    Target,
    acl_plan,
    main,
    needs_of,
)
from channels_valkey._cli.table import plural, table
from channels_valkey._common.hosts import ClusterHost, SentinelHost, ServerHost, parse_hosts
from channels_valkey._queue.keys import KeySpace

# --- which key is what ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("asgichat.room", ("channel", "chat.room")),
        ("asgispecific.abc!", ("process", "specific.abc!")),
        ("asgi:group:room", ("group", "room")),
        ("asgichat.room$inflight", ("inflight", "chat.room")),
        ("asgichat.room$wake:abc", ("internal", "asgichat.room$wake:abc")),
        ("asgispecific.abc!$wake:abc", ("internal", "asgispecific.abc!$wake:abc")),
        ("other", None),
    ],
)
def test_classify_standalone_keys(key: str, expected: Any) -> None:
    assert classify(key, "asgi", hash_tags=False) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("asgi{chat.room}", ("channel", "chat.room")),
        ("asgi{specific.abc!}", ("process", "specific.abc!")),
        ("asgi:group:{room}", ("group", "room")),
        ("asgi{chat.room}$wake:abc", ("internal", "asgi{chat.room}$wake:abc")),
    ],
)
def test_classify_cluster_keys(key: str, expected: Any) -> None:
    assert classify(key, "asgi", hash_tags=True) == expected


def test_classify_matches_the_key_layout() -> None:
    """The names the layer makes are read back as what they are."""
    for hash_tags in (False, True):
        keys = KeySpace("pre", hash_tags=hash_tags)
        queue = keys.queue("chat")
        assert classify(queue, "pre", hash_tags=hash_tags) == ("channel", "chat")
        local = keys.queue("specific.x!y")
        assert classify(local, "pre", hash_tags=hash_tags) == ("process", "specific.x!")
        assert classify(keys.group("g"), "pre", hash_tags=hash_tags) == ("group", "g")
        wake = classify(keys.wake(queue, "r"), "pre", hash_tags=hash_tags)
        assert wake is not None
        assert wake[0] == "internal"
        assert classify(keys.alive(), "pre", hash_tags=hash_tags) == (
            "registry",
            "live processes",
        )


@pytest.mark.parametrize(
    ("reply", "score"),
    [([], None), ([b"m", b"12.5"], 12.5), ([(b"m", 12.5)], 12.5), ([[b"m", b"3"]], 3.0)],
)
def test_first_score(reply: Any, score: float | None) -> None:
    assert _first_score(reply) == score


# --- the commands the layers need -----------------------------------------------------------


def commands(needs: tuple[Need, ...]) -> list[str]:
    return [need.command for need in needs]


def test_core_needs() -> None:
    assert commands(CORE_NEEDS) == [
        "EVALSHA",
        "SCRIPT LOAD",
        "BZMPOP",
        "ZRANGEBYSCORE",
        "ZCOUNT",
        "ZREM",
        "ZADD",
        "ZCARD",
        "ZREMRANGEBYSCORE",
        "EXPIRE",
        "ZSCORE",
        "ZREVRANGEBYSCORE",
        "TIME",
        "INFO",
        "SCAN",
        "UNLINK",
        "WAIT",
        "PING",
    ]
    assert [need.command for need in CORE_NEEDS if need.option] == ["WAIT"]


def test_pubsub_needs() -> None:
    assert commands(needs_of("pubsub", on_cluster=False)) == [
        "PUBLISH",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PUBSUB NUMSUB",
        "PING",
    ]
    assert needs_of("pubsub", on_cluster=True) == PUBSUB_NEEDS + PUBSUB_CLUSTER_NEEDS
    assert commands(PUBSUB_CLUSTER_NEEDS) == [
        "SPUBLISH",
        "SSUBSCRIBE",
        "SUNSUBSCRIBE",
        "PUBSUB SHARDNUMSUB",
    ]
    assert needs_of("core", on_cluster=True) == CORE_NEEDS


def target(hosts: list[Any], prefix: str = "asgi", layer: str = "core") -> Target:
    return Target(layer, parse_hosts(hosts), prefix, frozenset(), "--hosts")


def test_sample_calls_use_names_under_the_prefix() -> None:
    plan = acl_plan(target(["valkey://localhost"], prefix="site"))
    calls = {need.command: need.call(plan.names) for need in plan.needs}
    assert calls["ZADD"] == ("ZADD", "sitechannels_valkey.check", "0", "member")
    assert calls["ZREM"] == ("ZREM", "site:group:check", "member")
    assert calls["BZMPOP"][4] == "sitechannels_valkey.check$wake:check"
    assert calls["SCRIPT LOAD"] == ("SCRIPT", "LOAD", "return 1")
    assert calls["SCAN"] == ("SCAN", "0", "MATCH", "site*", "COUNT", "1000")
    assert calls["PING"] == ("PING",)


def test_sample_keys_are_hash_tagged_on_a_cluster() -> None:
    plan = acl_plan(target([{"cluster": True, "startup_nodes": [("n", 1)]}]))
    assert plan.names["<queue>"] == "asgi{channels_valkey.check}"
    assert plan.names["<group>"] == "asgi:group:{check}"


def test_pubsub_sample_channel_is_a_group_channel() -> None:
    plan = acl_plan(target(["valkey://localhost"], layer="pubsub"))
    calls = {need.command: need.call(plan.names) for need in plan.needs}
    assert calls["PUBLISH"] == ("PUBLISH", "asgi__group__check", "message")


# --- server replies -------------------------------------------------------------------------


def test_versions() -> None:
    assert _version_of({"redis_version": "7.2.4", "valkey_version": "8.0.1"}) == "valkey 8.0.1"
    assert _version_of({"redis_version": "7.0.15"}) == "redis 7.0.15"
    assert _version_of({}) is None
    assert _too_old("redis 6.2.14")
    assert _too_old("redis 6.0.20")
    assert not _too_old("redis 7.0.15")
    assert not _too_old("valkey 7.2.0")
    assert not _too_old("valkey 8.0.1")
    assert not _too_old("valkey 10.0.0")


def test_cluster_shards_reply() -> None:
    primary_fields = [b"id", b"a", b"port", 7000, b"tls-port", 8000, b"ip", b"10.0.0.1"]
    primary_fields += [b"endpoint", b"node-a", b"role", b"master", b"health", b"online"]
    replica_fields = [b"id", b"b", b"port", 7001, b"ip", b"10.0.0.2", b"endpoint", b"?"]
    replica_fields += [b"role", b"replica", b"health", b"fail"]
    shard = [b"slots", [0, 5460, 6000, 6001], b"nodes", [primary_fields, replica_fields]]
    primary, replica = _shard_members(shard, tls=False)
    assert (primary.host, primary.port, primary.role) == ("node-a", 7000, "primary")
    assert primary.slots == "0-5460,6000-6001"
    assert (replica.host, replica.port, replica.role, replica.health) == (
        "10.0.0.2",
        7001,
        "replica",
        "fail",
    )
    primary, replica = _shard_members(shard, tls=True)
    assert primary.port == 8000
    assert replica.port == 7001  # no TLS port listed: the plain one


# --- connecting for a diagnosis -------------------------------------------------------------


def test_diagnosis_adds_timeouts_and_one_attempt() -> None:
    (host,) = parse_hosts([{"address": "valkey://h:1", "socket_timeout": 30}])
    tuned = for_diagnosis(host, 2.0)
    assert isinstance(tuned, ServerHost)
    assert tuned.url == "valkey://h:1"
    assert tuned.kwargs["socket_timeout"] == 30  # the settings' own value stays
    assert tuned.kwargs["socket_connect_timeout"] == 2.0
    assert tuned.kwargs["retry"]._retries == 0  # tried once
    assert "retry" not in host.kwargs  # the original is untouched


def test_diagnosis_of_sentinel_and_cluster_entries() -> None:
    (sentinel,) = parse_hosts([{"sentinels": [("s", 1)], "master_name": "m", "password": "p"}])
    tuned = for_diagnosis(sentinel, 3.0)
    assert isinstance(tuned, SentinelHost)
    assert tuned.kwargs["password"] == "p"
    assert tuned.sentinel_kwargs["socket_connect_timeout"] == 3.0
    (cluster,) = parse_hosts([{"cluster": True, "startup_nodes": [("n", 1)]}])
    tuned_cluster = for_diagnosis(cluster, 3.0)
    assert isinstance(tuned_cluster, ClusterHost)
    assert tuned_cluster.kwargs["socket_timeout"] == 3.0
    assert "retry" not in tuned_cluster.kwargs


# --- options --------------------------------------------------------------------------------


def test_hosts_option_takes_urls_and_json_entries() -> None:
    assert cli._parse_hosts_option("valkey://h:1") == "valkey://h:1"
    assert cli._parse_hosts_option('{"cluster": true, "startup_nodes": [["n", 1]]}') == {
        "cluster": True,
        "startup_nodes": [["n", 1]],
    }
    assert cli._parse_hosts_option('["h", 6379]') == ["h", 6379]


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out
    assert main(["check", "--help"]) == 0
    assert "--settings" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["check", "--timeout", "0", "--hosts", "valkey://h"]) == 2
    assert "seconds > 0" in capsys.readouterr().err
    assert main(["check", "--settings", "x", "--prefix", "p"]) == 2
    assert "--prefix and --layer go with --hosts" in capsys.readouterr().err


def test_bad_hosts_are_refused_with_the_layers_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--hosts", "valkey://h", "--hosts", '{"cluster": true}']) == 2
    err = capsys.readouterr().err
    assert err.startswith("channels-valkey: error: --hosts: ")
    assert "startup_nodes" in err


# --- formatting -----------------------------------------------------------------------------


def test_table_and_counts() -> None:
    assert table([("A", "NUM"), ("long", "7"), ("x", "123")], right=(1,)) == [
        "A     NUM",
        "long    7",
        "x     123",
    ]
    assert plural(1, "key") == "1 key"
    assert plural(0, "key") == "0 keys"


@pytest.mark.parametrize(
    ("age", "text"),
    [(None, "-"), (0.04, "0.0s"), (12.34, "12.3s"), (61, "1m01s"), (3725, "1h02m")],
)
def test_format_age(age: float | None, text: str) -> None:
    assert format_age(age) == text
