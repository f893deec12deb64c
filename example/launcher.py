"""Start the example chat: a Valkey server and several uvicorn processes of the same app.

    python example/launcher.py [PORT ...]

Ports come from the arguments, else from ``PORTS`` ("8001 8002"), else 8001 and 8002; port 0
picks a free one. ``HOST`` is the address to serve on (127.0.0.1). Unless ``VALKEY_URL`` is set,
a private ``valkey-server`` is started on a free loopback port, in a temporary directory and
without persistence. ``CHANNEL_LAYER_BACKEND`` picks the channel layer class and
``CHANNEL_LAYER_CONFIG`` (JSON) adds options to it. Ctrl-C or SIGTERM stops everything that was
started; so does any of the processes dying.

Only the standard library is used here, so that the tests can drive the same code through
:class:`Example`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent
DEFAULT_BACKEND = "channels_valkey.core.ValkeyChannelLayer"
DEFAULT_PORTS = (8001, 8002)
DEFAULT_HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

Sink = Callable[[str], None]


class StartupError(RuntimeError):
    """Something the example needs could not be started."""


@dataclass(frozen=True)
class Server:
    """One uvicorn process of the example, as a client sees it."""

    name: str
    url: str
    port: int
    pid: int


class Child:
    """A process started by the launcher, its output kept and forwarded line by line to a sink.

    Each child gets a session of its own, so that a Ctrl-C in the terminal reaches only the
    launcher, which then stops the children in order. Where ``setpriv`` exists the child also
    gets SIGTERM if the launcher dies without cleaning up; note that this follows the thread
    that started it, so start children from a thread that lives as long as they should.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        sink: Sink | None,
    ) -> None:
        self.name = name
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        self.process = subprocess.Popen(
            [*prefix, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.output: list[str] = []
        self.forwarded = sink is not None
        self._pump = threading.Thread(target=self._forward, args=(sink,), daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output[-lines:])

    def _forward(self, sink: Sink | None) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if sink is not None:
                sink(f"[{self.name}] {line}")

    def terminate(self) -> None:
        if self.running():
            self._signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process and its output."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()
        self._pump.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _signal(self, signum: int) -> None:
        # The whole session: uvicorn or valkey-server and anything either started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {host} port {port}: {exc.strerror}") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _client_host(host: str) -> str:
    """Where to connect to reach a server listening on ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Example:
    """A channel layer server (unless ``valkey_url`` is given) and one uvicorn per port.

    ``start()`` returns once every server answers; if it fails it stops what it started.
    ``stop()`` may be called any number of times, also after a failed ``start()``.
    """

    def __init__(
        self,
        ports: Sequence[int] = DEFAULT_PORTS,
        host: str = DEFAULT_HOST,
        backend: str = DEFAULT_BACKEND,
        valkey_url: str | None = None,
        sink: Sink = print,
        python: str = sys.executable,
        layer_config: dict[str, object] | None = None,
    ) -> None:
        if not ports:
            raise ValueError("at least one port is needed")
        self.ports = list(ports)
        self.host = host
        self.backend = backend
        self.valkey_url = valkey_url
        self.private_valkey = valkey_url is None
        self.sink = sink
        self.python = python
        #: Options for the layer's CONFIG (as CHANNEL_LAYER_CONFIG); None keeps the environment's.
        self.layer_config = layer_config
        self.servers: list[Server] = []
        self._valkey: Child | None = None
        self._uvicorns: list[Child] = []
        self._tmpdir: str | None = None

    def __enter__(self) -> Example:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            if self.valkey_url is None:
                self.valkey_url = self._start_valkey()
            self._start_uvicorns()
        except BaseException:
            self.stop()
            raise

    def children(self) -> list[Child]:
        return [*self._uvicorns, *([self._valkey] if self._valkey else [])]

    def dead_child(self) -> Child | None:
        """The first process that has exited, if any: the example cannot work without it."""
        return next((child for child in self.children() if not child.running()), None)

    def stop(self) -> None:
        # Web servers first, together: closing their sockets still talks to Valkey.
        for child in self._uvicorns:
            child.terminate()
        for child in self.children():
            child.stop()
        self._uvicorns = []
        self._valkey = None
        self.servers = []
        if self.private_valkey:
            self.valkey_url = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _start_valkey(self) -> str:
        executable = shutil.which("valkey-server")
        if executable is None:
            raise StartupError(
                "valkey-server is not installed: install it (example/run does) "
                "or point VALKEY_URL at a running server"
            )
        self._tmpdir = tempfile.mkdtemp(prefix="channels-valkey-example-")
        host = "127.0.0.1"
        port = free_port(host)
        self._valkey = Child(
            "valkey",
            [
                executable,
                "--bind", host,
                "--port", str(port),
                "--dir", self._tmpdir,
                "--save", "",
                "--appendonly", "no",
                "--loglevel", "warning",
            ],
            dict(os.environ),
            None,  # only start-up warnings; shown if it exits
        )  # fmt: skip
        _wait_until(
            lambda: _valkey_answers(host, port),
            self._valkey,
            f"valkey-server on {host} port {port}",
        )
        # channels_redis only understands redis:// URLs; channels_valkey takes either scheme.
        scheme = "redis" if self.backend.startswith("channels_redis.") else "valkey"
        return f"{scheme}://{host}:{port}/0"

    def _start_uvicorns(self) -> None:
        ports = [port or free_port(self.host) for port in self.ports]
        for port in ports:
            check_port_free(self.host, port)
        base_urls = [f"http://{_url_host(_client_host(self.host))}:{port}" for port in ports]
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="chatsite.settings",
            CHANNEL_LAYER_BACKEND=self.backend,
            VALKEY_URL=str(self.valkey_url),
            EXAMPLE_SERVERS=",".join(base_urls),
            PYTHONUNBUFFERED="1",
        )
        if self.layer_config is not None:
            env["CHANNEL_LAYER_CONFIG"] = json.dumps(self.layer_config)
        for index, (port, url) in enumerate(zip(ports, base_urls, strict=True)):
            name = f":{port}"
            child = Child(
                name,
                [
                    self.python, "-m", "uvicorn", "chatsite.asgi:application",
                    "--app-dir", str(EXAMPLE_DIR),
                    "--host", self.host,
                    "--port", str(port),
                    "--lifespan", "off",
                    "--timeout-graceful-shutdown", "3",
                ],
                env,
                self.sink,
            )  # fmt: skip
            self._uvicorns.append(child)
            self.servers.append(Server(chr(ord("A") + index), url + "/", port, child.pid))
        for server, child in zip(self.servers, self._uvicorns, strict=True):
            _wait_until(lambda url=server.url: _http_answers(url), child, server.url)


def _valkey_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# Straight to the server, whatever proxy the environment names.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_answers(url: str) -> bool:
    try:
        with _direct.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_until(ready: Callable[[], bool], child: Child, what: str) -> None:
    """Poll ``ready`` until it holds, the child dies, or STARTUP_TIMEOUT runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not ready():
        if not child.running():
            raise StartupError(f"{what} exited during start-up:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise StartupError(
                f"{what} did not answer within {STARTUP_TIMEOUT:.0f} s:\n{child.tail()}"
            )
        time.sleep(0.1)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _print_line(line: str) -> None:
    print(line, flush=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the example chat on several processes sharing one channel layer."
    )
    parser.add_argument("ports", nargs="*", type=int, metavar="PORT")
    args = parser.parse_args(argv)
    if not args.ports:
        from_env = os.environ.get("PORTS", "").replace(",", " ").split()
        try:
            args.ports = [int(port) for port in from_env] or list(DEFAULT_PORTS)
        except ValueError:
            parser.error(f"PORTS must be port numbers, got {os.environ['PORTS']!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    host = os.environ.get("HOST") or DEFAULT_HOST
    if not (host == "localhost" or host == "::1" or host.startswith("127.")):
        # Reached under other names than the loopback ones that the settings allow.
        os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "*")
    example = Example(
        ports=args.ports,
        host=host,
        backend=os.environ.get("CHANNEL_LAYER_BACKEND") or DEFAULT_BACKEND,
        valkey_url=os.environ.get("VALKEY_URL") or None,
        sink=_print_line,
    )
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    try:
        example.start()
        where = "a private valkey-server" if example.private_valkey else "Valkey"
        print(f"\nChannel layer: {example.backend} on {where} at {example.valkey_url}")
        for server in example.servers:
            print(f"  server {server.name}: {server.url}  (pid {server.pid})")
        print(
            "Open a room on both and type: each message goes from one process to the other "
            "through Valkey. Ctrl-C stops everything.\n",
            flush=True,
        )
        while (dead := example.dead_child()) is None:
            time.sleep(0.5)
        if not dead.forwarded:
            print(dead.tail())
        print(f"{dead.name} exited with status {dead.process.returncode}.")
        return 1
    except _Stop:
        return 0
    except StartupError as exc:
        print(f"Cannot start the example: {exc}", file=sys.stderr)
        return 1
    finally:
        # Stopping is bounded (SIGKILL after STOP_TIMEOUT): let nothing cut it short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        print("Stopping...", flush=True)
        example.stop()


if __name__ == "__main__":
    sys.exit(main())
