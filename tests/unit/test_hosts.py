"""Unit tests for channels_valkey._common.hosts: every ``hosts`` shape, accepted or refused."""

from __future__ import annotations

from typing import Any

import pytest

from channels_valkey._common.hosts import (
    DEFAULT_URL,
    ClusterHost,
    SentinelHost,
    ServerHost,
    parse_hosts,
)
from channels_valkey.exceptions import ConfigurationError

# --- accepted forms -------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", [None, [], ()])
def test_nothing_means_one_local_server(hosts: Any) -> None:
    assert parse_hosts(hosts) == (ServerHost(url="valkey://localhost:6379"),)
    assert DEFAULT_URL == "valkey://localhost:6379"


@pytest.mark.parametrize(
    "url",
    [
        "valkey://localhost:6379",
        "valkeys://cache.example.com:6380/2",
        "redis://localhost:6379/0",
        "rediss://user:secret@cache.example.com:6380",
        "unix:///run/valkey/valkey.sock",
        "unix:///run/valkey/valkey.sock?db=3",
    ],
)
def test_url_strings_are_kept_as_written(url: str) -> None:
    (host,) = parse_hosts([url])
    assert host == ServerHost(url=url)
    assert dict(host.kwargs) == {}


@pytest.mark.parametrize("pair", [("cache.example.com", 6380), ["cache.example.com", 6380]])
def test_host_port_pairs(pair: Any) -> None:
    (host,) = parse_hosts([pair])
    assert isinstance(host, ServerHost)
    assert host.url is None
    assert dict(host.kwargs) == {"host": "cache.example.com", "port": 6380}
    assert host.describe() == "cache.example.com:6380"


@pytest.mark.parametrize("port", [1, 65535])
def test_pair_port_bounds_are_inclusive(port: int) -> None:
    (host,) = parse_hosts([("h", port)])
    assert host.kwargs["port"] == port


def test_address_dict_keeps_the_other_options_as_connection_kwargs() -> None:
    (host,) = parse_hosts([{"address": "rediss://cache:6380", "ssl_cert_reqs": None, "db": 1}])
    assert host == ServerHost(url="rediss://cache:6380", kwargs={"ssl_cert_reqs": None, "db": 1})


def test_plain_kwargs_dict() -> None:
    (host,) = parse_hosts([{"host": "cache", "port": 6390, "password": "pw", "db": 2}])
    assert isinstance(host, ServerHost)
    assert host.url is None
    assert dict(host.kwargs) == {"host": "cache", "port": 6390, "password": "pw", "db": 2}
    assert host.describe() == "cache:6390"


def test_unix_socket_kwargs_dict() -> None:
    (host,) = parse_hosts([{"path": "/run/valkey.sock"}])
    assert host.describe() == "unix:///run/valkey.sock"


def test_kwargs_dict_without_host_describes_the_default() -> None:
    (host,) = parse_hosts([{"db": 4}])
    assert host.describe() == "localhost:6379"


def test_parsed_kwargs_are_read_only_copies() -> None:
    options = {"host": "cache", "port": 6390}
    (host,) = parse_hosts([options])
    options["port"] = 1
    assert host.kwargs["port"] == 6390
    with pytest.raises(TypeError):
        host.kwargs["port"] = 2  # type: ignore[index]


def test_sentinel_dict() -> None:
    (host,) = parse_hosts(
        [
            {
                "sentinels": [("s1", 26379), ["s2", 26380]],
                "master_name": "mymaster",
                "sentinel_kwargs": {"password": "sentinel-pw"},
                "password": "primary-pw",
                "db": 1,
            }
        ]
    )
    assert isinstance(host, SentinelHost)
    assert host.sentinels == (("s1", 26379), ("s2", 26380))
    assert host.master_name == "mymaster"
    assert dict(host.sentinel_kwargs) == {"password": "sentinel-pw"}
    assert dict(host.kwargs) == {"password": "primary-pw", "db": 1}
    assert host.describe() == "sentinel://s1:26379,s2:26380/mymaster"


def test_sentinel_kwargs_are_optional() -> None:
    (host,) = parse_hosts([{"sentinels": [("s1", 26379)], "master_name": "m"}])
    assert isinstance(host, SentinelHost)
    assert dict(host.sentinel_kwargs) == {}
    assert dict(host.kwargs) == {}


def test_mixed_list_keeps_order_one_entry_per_shard() -> None:
    hosts = parse_hosts(
        [
            "valkey://a:6379",
            ("b", 6380),
            {"address": "redis://c:6381", "db": 3},
            {"host": "d", "port": 6382},
            {"sentinels": [("e", 26379)], "master_name": "m"},
        ]
    )
    assert [host.describe() for host in hosts] == [
        "valkey://a:6379",
        "b:6380",
        "redis://c:6381",
        "d:6382",
        "sentinel://e:26379/m",
    ]
    assert [type(host) for host in hosts] == [ServerHost] * 4 + [SentinelHost]


def test_a_tuple_of_hosts_is_a_list_of_hosts() -> None:
    assert parse_hosts(("valkey://a", "valkey://b")) == (
        ServerHost(url="valkey://a"),
        ServerHost(url="valkey://b"),
    )


# --- refused forms --------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", ["valkey://localhost:6379", b"valkey://localhost:6379"])
def test_a_single_url_instead_of_a_list(hosts: Any) -> None:
    kind = type(hosts).__name__
    with pytest.raises(
        ConfigurationError,
        match=rf"hosts must be a list of hosts, not a single {kind}; wrap it in a list",
    ):
        parse_hosts(hosts)


@pytest.mark.parametrize("hosts", [{"address": "valkey://localhost"}, 6379, {"valkey://a"}])
def test_not_a_list(hosts: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^hosts must be a list of hosts, got "):
        parse_hosts(hosts)


@pytest.mark.parametrize(
    "url", ["http://localhost:6379", "localhost:6379", "tcp://localhost", "valkey+tls://h"]
)
def test_bad_url_scheme(url: str) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"hosts\[0\] is .*: the URL scheme must be one of "
        r"redis, rediss, unix, valkey, valkeys$",
    ):
        parse_hosts([url])


def test_bad_scheme_in_address_names_the_entry() -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[1\]\['address'\] is 'http://x'"):
        parse_hosts(["valkey://a", {"address": "http://x"}])


def test_bad_scheme_message_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_hosts(["http://user:hunter2@cache:6379"])
    assert "hunter2" not in str(info.value)
    assert "user:***@cache" in str(info.value)


def test_address_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[0\]\['address'\] must be a URL string"):
        parse_hosts([{"address": ("localhost", 6379)}])


@pytest.mark.parametrize(
    "pair",
    [
        ("localhost",),
        ("localhost", 6379, 0),
        (6379, "localhost"),
        ("localhost", "port"),
        ("localhost", 6379.0),
        ("localhost", None),
        [],
    ],
)
def test_bad_pair(pair: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"hosts\[0\] must be a \(host, port\) pair such as"
    ):
        parse_hosts([pair])


@pytest.mark.parametrize("port", [0, -1, 65536, True, False])
def test_bad_port_in_pair(port: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[0\] must be a \(host, port\) pair"):
        parse_hosts([("localhost", port)])


@pytest.mark.parametrize("port", [0, 70000, "port", True, None])
def test_bad_port_in_kwargs_dict(port: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[0\]\['port'\] must be a port number"):
        parse_hosts([{"host": "localhost", "port": port}])


@pytest.mark.parametrize("entry", [6379, None, 1.5, object()])
def test_entry_of_unknown_type(entry: Any) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"hosts\[0\] must be a URL string, a \(host, port\) pair or a dict",
    ):
        parse_hosts([entry])


def test_error_names_the_index_of_the_bad_entry() -> None:
    with pytest.raises(ConfigurationError, match=r"^hosts\[2\] "):
        parse_hosts(["valkey://a", "valkey://b", ("c", 0)])


@pytest.mark.parametrize("master_name", [None, "", 5])
def test_sentinel_without_master_name(master_name: Any) -> None:
    entry: dict[str, Any] = {"sentinels": [("s", 26379)]}
    if master_name is not None:
        entry["master_name"] = master_name
    with pytest.raises(
        ConfigurationError,
        match=r"hosts\[0\] is a Sentinel entry: 'master_name' must name the monitored primary",
    ):
        parse_hosts([entry])


def test_master_name_alone_is_a_sentinel_entry_missing_sentinels() -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[0\]\['sentinels'\] must be a non-empty"):
        parse_hosts([{"master_name": "m"}])


@pytest.mark.parametrize("sentinels", ["s:26379", b"s:26379", ("s", 26379), [], {"s": 26379}, 5])
def test_sentinels_not_a_list_of_pairs(sentinels: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[0\]\['sentinels'\]"):
        parse_hosts([{"sentinels": sentinels, "master_name": "m"}])


@pytest.mark.parametrize("sentinels", ["s:26379", [], {"s": 26379}])
def test_sentinels_not_a_list_message(sentinels: Any) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"hosts\[0\]\['sentinels'\] must be a non-empty list of \(host, port\) pairs",
    ):
        parse_hosts([{"sentinels": sentinels, "master_name": "m"}])


def test_bad_sentinel_pair_is_named() -> None:
    with pytest.raises(
        ConfigurationError, match=r"hosts\[0\]\['sentinels'\]\[1\] must be a \(host, port\) pair"
    ):
        parse_hosts([{"sentinels": [("s1", 26379), ("s2", 0)], "master_name": "m"}])


def test_sentinel_kwargs_must_be_a_dict() -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[0\]\['sentinel_kwargs'\] must be a dict"):
        parse_hosts([{"sentinels": [("s", 26379)], "master_name": "m", "sentinel_kwargs": [1]}])


def test_sentinel_with_address() -> None:
    with pytest.raises(ConfigurationError, match=r"hosts\[0\] mixes 'address' with Sentinel"):
        parse_hosts([{"sentinels": [("s", 26379)], "master_name": "m", "address": "valkey://x"}])


@pytest.mark.parametrize("key", [1, b"host", None, ("host",)])
def test_non_string_dict_keys(key: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"hosts\[0\]: connection option names must be strings"
    ):
        parse_hosts([{"host": "localhost", key: "x"}])


# --- describe() never shows a password ------------------------------------------------------

SECRET = "hunter2"


@pytest.mark.parametrize(
    "entry",
    [
        f"valkey://:{SECRET}@cache:6379/0",
        f"valkey://user:{SECRET}@cache:6379",
        f"rediss://default:{SECRET}@cache",
        f"valkeys://user:{SECRET}@cache:6380/1?ssl_cert_reqs=none",
        {"address": f"valkey://user:{SECRET}@cache"},
        {"address": "valkey://cache", "password": SECRET},
        {"host": "cache", "password": SECRET},
        {"path": "/run/valkey.sock", "password": SECRET},
        ("cache", 6379),
        {
            "sentinels": [("s", 26379)],
            "master_name": "m",
            "password": SECRET,
            "sentinel_kwargs": {"password": SECRET},
        },
    ],
)
def test_describe_never_shows_a_password(entry: Any) -> None:
    (host,) = parse_hosts([entry])
    assert SECRET not in host.describe()
    assert SECRET not in repr(host.describe())


def test_describe_keeps_the_rest_of_a_url_with_a_password() -> None:
    (host,) = parse_hosts([f"valkey://user:{SECRET}@cache:6379/2"])
    assert host.describe() == "valkey://user:***@cache:6379/2"


@pytest.mark.parametrize(
    "url",
    [
        # A unix socket URL has no netloc: its password can only go in the query string, and
        # valkey-py's parse_url does take ``password`` from there.
        f"unix:///run/valkey.sock?password={SECRET}",
        f"valkey://cache:6379/0?password={SECRET}",
    ],
)
def test_describe_never_shows_a_password_given_in_the_query_string(url: str) -> None:
    (host,) = parse_hosts([url])
    assert SECRET not in host.describe()


@pytest.mark.parametrize(
    "hosts", [[("localhost", "6380")], [{"host": "localhost", "port": "6380"}]]
)
def test_numeric_string_ports_are_accepted_like_channels_redis(hosts: list[object]) -> None:
    (host,) = parse_hosts(hosts)
    assert host.kwargs["port"] == 6380


def test_a_cluster_entry_names_its_startup_nodes() -> None:
    (host,) = parse_hosts(
        [
            {
                "cluster": True,
                "startup_nodes": [("10.0.0.1", 7000), ["10.0.0.2", "7001"]],
                "ssl": True,
            }
        ]
    )
    assert isinstance(host, ClusterHost)
    assert host.startup_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert host.kwargs == {"ssl": True}
    assert host.describe() == "cluster://10.0.0.1:7000,10.0.0.2:7001"


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([{"cluster": True, "startup_nodes": [("a", 1)]}, "valkey://b"], "only entry in hosts"),
        ([{"cluster": "yes", "startup_nodes": [("a", 1)]}], r"\['cluster'\] must be True"),
        ([{"cluster": True}], "startup_nodes'\\] must be a non-empty list"),
        ([{"cluster": True, "startup_nodes": "a:1"}], "non-empty list"),
        ([{"cluster": True, "startup_nodes": [("a", 1)], "address": "valkey://a"}], "'address'"),
        ([{"cluster": True, "startup_nodes": [("a", 1)], "master_name": "m"}], "'master_name'"),
        ([{"cluster": True, "startup_nodes": [("a", "port")]}], r"\(host, port\) pair"),
    ],
)
def test_bad_cluster_entries_are_refused(hosts: list[object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_hosts(hosts)


# --- the protocol: RESP2 only ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "names"),
    [
        (
            [{"address": "valkey://cache:6379", "protocol": 3}],
            r"hosts\[0\] \(valkey://cache:6379\)",
        ),
        ([{"host": "cache", "port": 6380, "protocol": 3}], r"hosts\[0\] \(cache:6380\)"),
        (["valkey://a", "valkey://cache:6379/0?protocol=3"], r"hosts\[1\] \(valkey://cache"),
        ([{"address": "unix:///run/valkey.sock?protocol=3"}], r"hosts\[0\]\['address'\]"),
        (
            [{"sentinels": [("s", 26379)], "master_name": "mymaster", "protocol": 3}],
            r"hosts\[0\] \(sentinel://s:26379/mymaster\)",
        ),
        (
            [{"sentinels": [("s", 26379)], "master_name": "m", "sentinel_kwargs": {"protocol": 3}}],
            r"hosts\[0\]\['sentinel_kwargs'\] \(sentinel://s:26379/m\)",
        ),
        (
            [{"cluster": True, "startup_nodes": [("n", 7000)], "protocol": "3"}],
            r"hosts\[0\] \(cluster://n:7000\)",
        ),
    ],
)
def test_resp3_is_refused_naming_the_host_and_saying_why(hosts: list[object], names: str) -> None:
    with pytest.raises(ConfigurationError, match=names) as refused:
        parse_hosts(hosts)
    message = str(refused.value)
    assert "(RESP3)" in message
    assert "RESP2 only" in message
    assert "set it to 2" in message


def test_resp3_refusal_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as refused:
        parse_hosts(["valkey://user:secret@cache:6379?protocol=3"])
    assert "secret" not in str(refused.value)
    assert "user:***@cache" in str(refused.value)


@pytest.mark.parametrize("value", [1, 4, "three", True, 2.5])
def test_other_protocol_values_are_refused_too(value: object) -> None:
    with pytest.raises(ConfigurationError, match="RESP2 only"):
        parse_hosts([{"host": "cache", "protocol": value}])


@pytest.mark.parametrize(
    "hosts",
    [
        [{"host": "cache", "protocol": 2}],
        [{"address": "valkey://cache", "protocol": "2"}],
        [{"host": "cache", "protocol": None}],
        ["valkey://cache:6379?protocol=2"],
        [{"sentinels": [("s", 1)], "master_name": "m", "sentinel_kwargs": {"protocol": 2}}],
        [{"cluster": True, "startup_nodes": [("n", 7000)], "protocol": 2}],
    ],
)
def test_protocol_2_is_accepted_as_written(hosts: list[object]) -> None:
    (host,) = parse_hosts(hosts)
    assert host.kwargs.get("protocol") in (2, "2", None)
