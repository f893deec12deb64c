"""Parse the ``hosts`` option once, at construction, into typed values.

Users write ``hosts`` in the shapes ``channels_redis`` accepts; everything downstream works on
the frozen dataclasses below, so a bad entry fails here with a message that names it instead of
failing later inside the client. This module is pure: it opens no connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from channels_valkey.exceptions import ConfigurationError

#: URL schemes the client understands. ``redis``/``rediss`` stay accepted so that settings
#: written for channels_redis work unchanged.
URL_SCHEMES = frozenset({"valkey", "valkeys", "redis", "rediss", "unix"})

DEFAULT_URL = "valkey://localhost:6379"

_SENTINEL_KEYS = frozenset({"sentinels", "master_name", "sentinel_kwargs"})


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ServerHost:
    """One server reached directly, by URL or by connection keyword arguments.

    Exactly one of ``url`` and ``kwargs["host"]``/``kwargs["path"]`` says where the server is;
    the remaining ``kwargs`` (``password``, ``ssl_ca_certs``, ``socket_timeout``...) go to the
    connection unchanged.
    """

    url: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def describe(self) -> str:
        """Where the server is, without credentials, for messages and logs."""
        if self.url is not None:
            return _redact(self.url)
        if "path" in self.kwargs:
            return f"unix://{self.kwargs['path']}"
        return f"{self.kwargs.get('host', 'localhost')}:{self.kwargs.get('port', 6379)}"


@dataclass(frozen=True)
class SentinelHost:
    """A primary found through Sentinel: the layer follows it across failovers."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    sentinel_kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    #: Keyword arguments for the connections to the primary itself.
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def describe(self) -> str:
        nodes = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"sentinel://{nodes}/{self.master_name}"


@dataclass(frozen=True)
class ClusterHost:
    """A Valkey Cluster, found through any of its nodes. The cluster shards the keys itself,
    so a cluster entry is the only entry in ``hosts``."""

    startup_nodes: tuple[tuple[str, int], ...]
    #: Keyword arguments for the connections to every node (password, TLS...).
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def describe(self) -> str:
        return "cluster://" + ",".join(f"{host}:{port}" for host, port in self.startup_nodes)


Host = ServerHost | SentinelHost | ClusterHost


def _redact(url: str) -> str:
    """The URL with any password masked, in the user-info part or the query string."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if parts.query:
        query = [
            (name, "***" if name.lower() == "password" else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


def _check_protocol(where: str, host: str, value: object) -> None:
    """Refuse ``protocol`` values other than 2: the layers speak RESP2 only.

    RESP3 gives a channel layer nothing it uses (client-side caching, push notifications) and
    changes the shape of the replies under it: maps instead of flat lists, ``PONG`` instead of
    ``["pong", ""]`` on a subscribed connection, push frames between replies. Both layers read
    replies as RESP2 and are tested on RESP2 only, so a ``protocol=3`` is refused here, when
    the layer is built, rather than left to fail, or half work, on the first message. A
    client library that changes its default (as redis-py 8 moved to RESP3) changes nothing
    either: the layers never leave the protocol to the default of a library's release.
    """
    if value is None:
        return
    try:
        version = int(str(value))  # an int, or a string from a URL's query
    except ValueError:
        version = None
    if version == 2:
        return
    asks = " (RESP3)" if version == 3 else ""
    raise ConfigurationError(
        f"{where} ({host}) sets protocol={value!r}{asks}, but channels-valkey speaks RESP2 "
        "only: both layers read replies in RESP2's shapes, which RESP3 changes (maps, push "
        "frames, a subscribed connection's PONG). Remove 'protocol' or set it to 2."
    )


def _check_url_protocol(where: str, url: str) -> None:
    """``protocol`` given in the URL's query string, as valkey-py reads it (first value)."""
    values = parse_qs(urlsplit(url).query).get("protocol")
    if values:
        _check_protocol(where, _redact(url), values[0])


def parse_hosts(hosts: object) -> tuple[Host, ...]:
    """Turn the ``hosts`` option into one typed entry per shard.

    ``None`` or an empty list means one server at ``valkey://localhost:6379``, the peers'
    default. Several entries shard the keys between them by consistent hash.
    """
    if hosts is None or (
        isinstance(hosts, Sequence) and not isinstance(hosts, str | bytes) and len(hosts) == 0
    ):
        return (ServerHost(url=DEFAULT_URL),)
    if isinstance(hosts, str | bytes):
        raise ConfigurationError(
            f"hosts must be a list of hosts, not a single {type(hosts).__name__}; "
            f"wrap it in a list: hosts=[{hosts!r}]"
        )
    if not isinstance(hosts, Sequence):
        raise ConfigurationError(f"hosts must be a list of hosts, got {type(hosts).__name__}")
    parsed = tuple(_parse_entry(index, entry) for index, entry in enumerate(hosts))
    if len(parsed) > 1 and any(isinstance(host, ClusterHost) for host in parsed):
        raise ConfigurationError(
            "a cluster entry must be the only entry in hosts: the cluster shards the keys "
            "over its nodes itself; list more nodes in its 'startup_nodes' instead"
        )
    return parsed


def on_cluster(hosts: Sequence[Host]) -> bool:
    """Whether ``hosts`` (from :func:`parse_hosts`) is a cluster: then its one entry is."""
    return isinstance(hosts[0], ClusterHost)


def _parse_entry(index: int, entry: object) -> Host:
    where = f"hosts[{index}]"
    if isinstance(entry, str):
        return ServerHost(url=_check_url(where, entry))
    if isinstance(entry, tuple | list):
        return _parse_pair(where, entry)
    if isinstance(entry, Mapping):
        host = _parse_mapping(where, entry)
        _check_protocol(where, host.describe(), host.kwargs.get("protocol"))
        if isinstance(host, SentinelHost):
            _check_protocol(
                f"{where}['sentinel_kwargs']",
                host.describe(),
                host.sentinel_kwargs.get("protocol"),
            )
        return host
    raise ConfigurationError(
        f"{where} must be a URL string, a (host, port) pair or a dict, "
        f"got {type(entry).__name__}: {entry!r}"
    )


def _check_url(where: str, url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in URL_SCHEMES:
        raise ConfigurationError(
            f"{where} is {_redact(url)!r}: the URL scheme must be one of "
            f"{', '.join(sorted(URL_SCHEMES))}"
        )
    _check_url_protocol(where, url)
    return url


def _parse_pair(where: str, entry: Sequence[object]) -> ServerHost:
    port = _port(entry[1]) if len(entry) == 2 else None
    if port is None or not isinstance(entry[0], str):
        raise ConfigurationError(
            f"{where} must be a (host, port) pair such as ('localhost', 6379), got {entry!r}"
        )
    return ServerHost(kwargs=_frozen({"host": entry[0], "port": port}))


def _as_pair(value: object) -> Sequence[object]:
    return value if isinstance(value, tuple | list) else [value]


def _port(value: object) -> int | None:
    """A port number, also from a numeric string (settings often come from the environment)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    return None


def _parse_mapping(where: str, entry: Mapping[Any, Any]) -> Host:
    if any(not isinstance(key, str) for key in entry):
        raise ConfigurationError(f"{where}: connection option names must be strings")
    options = dict(entry)
    if "cluster" in options:
        return _parse_cluster(where, options)
    if _SENTINEL_KEYS & options.keys():
        return _parse_sentinel(where, options)
    if "address" in options:
        address = options.pop("address")
        if not isinstance(address, str):
            raise ConfigurationError(f"{where}['address'] must be a URL string, got {address!r}")
        return ServerHost(url=_check_url(f"{where}['address']", address), kwargs=_frozen(options))
    if "port" in options:
        port = _port(options["port"])
        if port is None:
            raise ConfigurationError(
                f"{where}['port'] must be a port number, got {options['port']!r}"
            )
        options["port"] = port
    return ServerHost(kwargs=_frozen(options))


def _parse_sentinel(where: str, options: dict[str, Any]) -> SentinelHost:
    sentinels = options.pop("sentinels", None)
    master_name = options.pop("master_name", None)
    sentinel_kwargs = options.pop("sentinel_kwargs", None) or {}
    if not isinstance(master_name, str) or not master_name:
        raise ConfigurationError(
            f"{where} is a Sentinel entry: 'master_name' must name the monitored primary"
        )
    if isinstance(sentinels, str | bytes) or not isinstance(sentinels, Sequence) or not sentinels:
        raise ConfigurationError(
            f"{where}['sentinels'] must be a non-empty list of (host, port) pairs, "
            f"got {sentinels!r}"
        )
    pairs = tuple(
        _parse_pair(
            f"{where}['sentinels'][{i}]", pair if isinstance(pair, tuple | list) else [pair]
        )
        for i, pair in enumerate(sentinels)
    )
    if not isinstance(sentinel_kwargs, Mapping):
        raise ConfigurationError(f"{where}['sentinel_kwargs'] must be a dict")
    if "address" in options:
        raise ConfigurationError(
            f"{where} mixes 'address' with Sentinel options; a Sentinel entry finds the "
            "primary itself, drop 'address'"
        )
    return SentinelHost(
        sentinels=tuple((p.kwargs["host"], p.kwargs["port"]) for p in pairs),
        master_name=master_name,
        sentinel_kwargs=_frozen(sentinel_kwargs),
        kwargs=_frozen(options),
    )


def _parse_cluster(where: str, options: dict[str, Any]) -> ClusterHost:
    if options.pop("cluster") is not True:
        raise ConfigurationError(f"{where}['cluster'] must be True for a cluster entry")
    clashing = sorted((_SENTINEL_KEYS | {"address", "host", "port"}) & options.keys())
    if clashing:
        raise ConfigurationError(
            f"{where} is a cluster entry: name its nodes in 'startup_nodes', not with "
            f"{', '.join(repr(key) for key in clashing)}"
        )
    nodes = options.pop("startup_nodes", None)
    if isinstance(nodes, str | bytes) or not isinstance(nodes, Sequence) or not nodes:
        raise ConfigurationError(
            f"{where}['startup_nodes'] must be a non-empty list of (host, port) pairs, "
            f"got {nodes!r}"
        )
    pairs = tuple(
        _parse_pair(f"{where}['startup_nodes'][{i}]", _as_pair(node))
        for i, node in enumerate(nodes)
    )
    return ClusterHost(
        startup_nodes=tuple((p.kwargs["host"], p.kwargs["port"]) for p in pairs),
        kwargs=_frozen(options),
    )
