"""A minimal blocking RESP2 client on the standard library, for the benchmark's own queries.

The benchmark reads ``INFO``, flushes and resets the server through this client rather than
through valkey-py or redis-py, so that its own queries never show up in the client round trips
counted inside the layers' client libraries, and so that ``driver.py`` runs on a bare
``python3``.
"""

from __future__ import annotations

import socket
from typing import Union
from urllib.parse import urlsplit

Reply = Union[None, int, bytes, str, list["Reply"], "ServerError"]


class ServerError(Exception):
    """An error reply (``-ERR ...``)."""


def address_of(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``redis://``/``valkey://`` URL."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


#: The benchmark's name for a cluster: ``cluster://host:port,host:port,...`` (every node).
CLUSTER_SCHEME = "cluster://"


def nodes_of(url: str) -> list[tuple[str, int]]:
    """Every server behind ``url``: the one of a ``redis://`` URL, or each node of a
    ``cluster://`` one."""
    if not url.startswith(CLUSTER_SCHEME):
        return [address_of(url)]
    nodes = []
    for item in url[len(CLUSTER_SCHEME) :].split(","):
        host, _, port = item.rpartition(":")
        nodes.append((host, int(port)))
    return nodes


class RespClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")

    @classmethod
    def from_url(cls, url: str, timeout: float = 30.0) -> RespClient:
        host, port = address_of(url)
        return cls(host, port, timeout)

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, *args: str | bytes | int | float) -> Reply:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        reply = self._read()
        if isinstance(reply, ServerError):
            raise reply
        return reply

    def text(self, *args: str | bytes | int | float) -> str:
        reply = self.command(*args)
        if isinstance(reply, bytes):
            return reply.decode()
        return str(reply)

    def info(self, *sections: str) -> dict[str, str]:
        """``INFO`` as ``{field: value}`` (section headers dropped)."""
        fields: dict[str, str] = {}
        for line in self.text("INFO", *sections).splitlines():
            if line and not line.startswith("#") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value
        return fields

    def _read(self) -> Reply:
        line = self._file.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return ServerError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self._read() for _ in range(count)]
        raise ValueError(f"unexpected reply line {line!r}")


def command_calls(info: dict[str, str]) -> dict[str, int]:
    """``{command: calls}`` from the fields of ``INFO commandstats``."""
    calls: dict[str, int] = {}
    for name, value in info.items():
        if not name.startswith("cmdstat_"):
            continue
        for item in value.split(","):
            key, _, number = item.partition("=")
            if key == "calls":
                calls[name[len("cmdstat_") :]] = int(number)
    return calls
