"""Real ``valkey-server`` and ``valkey-sentinel`` processes for the test suite.

The channel layers are only worth testing against the real thing: replies,
errors, Lua semantics, TLS handshakes, unix sockets and Sentinel failovers all
behave in ways that a mock would get subtly wrong. So every helper here starts
a genuine server process, on loopback only, in a private temporary directory.

Design rules, and why:

* No fixed sleeps. Everything that waits polls a condition in a short loop
  bounded by a deadline (:func:`wait_for`), so the suite is as fast as the
  servers allow and fails with a clear message (and the server's log tail)
  instead of hanging.
* Processes never outlive the test run. Each process is registered in a
  module-level set that an ``atexit`` hook kills; it is also started with
  ``PR_SET_PDEATHSIG`` so that the kernel kills it if the test process itself
  is SIGKILLed (e.g. by a CI timeout), and in its own session so a Ctrl-C in
  the terminal reaches only pytest, which then tears the fixtures down.
* A server keeps its port, unix socket path and directory across
  :meth:`ValkeyServer.stop`/:meth:`ValkeyServer.start`, so restart tests talk
  to "the same" server, and with ``persistence=True`` its data survives.
* The configuration file is written once, on the first start, and never
  rewritten by us afterwards: Sentinel (and ``CONFIG REWRITE`` on servers it
  reconfigures) edits these files, and a restart must honour those edits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import valkey

__all__ = [
    "SERVER_KIND",
    "SERVER_PREFIX",
    "STARTUP_TIMEOUT",
    "SentinelGroup",
    "SentinelServer",
    "TLSFiles",
    "Topology",
    "ValkeyServer",
    "free_port",
    "make_tls_files",
    "running",
    "wait_for",
]

HOST = "127.0.0.1"

#: Which server the fixtures start. The commands are ``<prefix>-server``, ``<prefix>-sentinel``
#: and ``<prefix>-cli``: ``valkey`` (the default) runs Valkey, ``redis`` runs Redis, and a path
#: such as ``/opt/redis-7.0/usr/bin/redis`` runs binaries that are not on PATH. The CI matrix
#: uses it to run the behavioural suites against the oldest server in reach (Redis 7.0).
SERVER_PREFIX = os.environ.get("CHANNELS_VALKEY_TEST_SERVER", "").strip() or "valkey"
#: ``"valkey"`` or ``"redis"``: the server under test, for the few tests whose expectations
#: differ between the two (the version ``INFO`` reports, error texts).
SERVER_KIND = "redis" if SERVER_PREFIX.rsplit("/", 1)[-1] == "redis" else "valkey"


def server_command(role: str) -> str:
    """The command for ``role`` (``"server"``, ``"sentinel"`` or ``"cli"``) of the server
    under test, as named by ``CHANNELS_VALKEY_TEST_SERVER``."""
    return f"{SERVER_PREFIX}-{role}"


#: How long a process may take to answer PING after it was spawned.
STARTUP_TIMEOUT = 10.0
#: How long a graceful stop may take before we fall back to SIGKILL.
STOP_TIMEOUT = 10.0

T = TypeVar("T")


class ServerError(RuntimeError):
    """A test server could not be started or did not reach the wanted state."""


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.01,
    describe: Callable[[], str] | str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Waiting on a condition (instead of sleeping a guessed amount) keeps the
    suite fast on a quick machine and correct on a slow one. Exceptions raised
    by the predicate count as "not yet" (a server that is still starting
    refuses connections); the last one is chained to the timeout error so the
    real cause is visible.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except (OSError, valkey.ValkeyError) as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            what = describe() if callable(describe) else describe
            raise ServerError(f"timed out after {timeout:.1f}s waiting for {what}") from last_error
        time.sleep(interval)


# --------------------------------------------------------------------------
# Ports and process bookkeeping
# --------------------------------------------------------------------------

_handed_out_ports: set[int] = set()


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago.

    The kernel picks an unused port for a socket bound to port 0; we close it
    and hand the number to the server. Ports already handed out in this
    process are skipped so two servers started back to back never collide
    with each other (a collision with some unrelated process is still
    possible; :meth:`ValkeyServer.start` retries with a new port then).
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise ServerError("could not find a free loopback port")


_live_processes: set[_ManagedProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: kill whatever a crashed or interrupted run left running."""
    for process in list(_live_processes):
        with contextlib.suppress(Exception):
            process.kill()


_PR_SET_PDEATHSIG = 1
try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _child_setup() -> None:
    """Run in the forked child: die with the parent (Linux only).

    Without this a SIGKILLed pytest would leave servers holding ports until
    the machine is recycled. Must stay tiny: it runs between fork and exec.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its forked children, then reap it.

    Every process is started with ``start_new_session=True``, so its pid is
    also its process-group id. The group is signalled before the leader is
    reaped, so the id cannot have been reused by then.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def require_binary(name: str) -> str:
    """The path of command ``name``, or a :class:`ServerError` that says how to get it."""
    path = shutil.which(name)
    if path is None:
        if SERVER_PREFIX != "valkey":
            raise ServerError(
                f"{name!r} not found: CHANNELS_VALKEY_TEST_SERVER={SERVER_PREFIX!r} names "
                f"the server under test, so {SERVER_PREFIX}-server, {SERVER_PREFIX}-sentinel "
                f"and {SERVER_PREFIX}-cli must exist (unset it to test against Valkey)."
            )
        raise ServerError(
            f"{name!r} is not on PATH. Run the suite through ./scripts/test, which installs "
            "valkey-server, valkey-sentinel and valkey-cli from Debian packages."
        )
    return path


def _ping_raw(address: tuple[str, int] | str, timeout: float = 0.5) -> bool:
    """Send PING on a fresh plain connection; True only for ``+PONG``.

    A raw socket keeps readiness checks independent of any client library and
    of TLS. ``-LOADING`` (AOF still being replayed) is correctly "not ready".
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(64)
            if not chunk:
                return False
            reply += chunk
    return reply.startswith(b"+PONG")


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files generated for a TLS server (all in its directory)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """Create a throw-away CA, a server certificate and a client certificate.

    Generated with ``cryptography`` (a test dependency) so no ``openssl`` CLI
    is needed. The server certificate is valid for ``127.0.0.1`` and
    ``localhost`` so hostname checking works if a client turns it on. The
    certificates carry the extensions that Python 3.13's ``VERIFY_X509_STRICT``
    default insists on (critical basic constraints, key usage, SKI/AKI), so
    they verify on every supported Python.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=30)

    def new_key() -> ec.EllipticCurvePrivateKey:
        # EC keys generate in microseconds; RSA would slow fixture start-up.
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    def write_cert(cert: x509.Certificate, path: Path) -> None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "channels-valkey test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier) -> tuple[Any, x509.Certificate]:
        key = new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
                ),
                critical=False,
            )
        )
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = leaf("channels-valkey test client", ExtendedKeyUsageOID.CLIENT_AUTH)

    files = TLSFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    write_cert(ca_cert, files.ca_cert)
    write_key(ca_key, files.ca_key)
    write_cert(server_cert, files.server_cert)
    write_key(server_key, files.server_key)
    write_cert(client_cert, files.client_cert)
    write_key(client_key, files.client_key)
    return files


# --------------------------------------------------------------------------
# Process lifecycle shared by servers and sentinels
# --------------------------------------------------------------------------


class _ManagedProcess:
    """Lifecycle of one server-like process living in its own directory."""

    binary = server_command("server")

    def __init__(self, *, name: str) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"channels-valkey-{name}-"))
        self.config_path = self.dir / f"{name}.conf"
        self.log_path = self.dir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: valkey.Valkey | None = None
        self._config_written = False
        self._removed = False

    # -- to be provided by subclasses -------------------------------------

    def _config_lines(self) -> list[str]:
        raise NotImplementedError

    def _ping_address(self) -> tuple[str, int] | str:
        raise NotImplementedError

    def _new_client(self) -> valkey.Valkey:
        raise NotImplementedError

    def _pick_new_port(self) -> bool:
        """Choose fresh port(s) after a bind clash; False if the port was fixed."""
        return False

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> _ManagedProcess:
        """Start the process (if not running) and wait until it answers PING.

        On the first start a port clash with an unrelated process is retried
        on a fresh port; later starts keep the port, as a restart must.
        """
        if self._removed:
            raise ServerError(f"{self.name}: start() after cleanup()")
        if self.running:
            return self
        binary = require_binary(self.binary)
        for attempt in range(5):
            first_start = not self._config_written
            if first_start:
                self.config_path.write_text("\n".join(self._config_lines()) + "\n")
                self.config_path.chmod(0o600)
                self._config_written = True
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [binary, str(self.config_path)],
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_child_setup,
                )
            _live_processes.add(self)
            try:
                self._wait_until_ready()
            except ServerError:
                self.kill()
                log_text = self.log_path.read_bytes()[log_offset:]
                if (
                    first_start
                    and attempt < 4
                    and b"Address already in use" in log_text
                    and self._pick_new_port()
                ):
                    self._config_written = False
                    continue
                raise
            self._on_started()
            return self
        raise AssertionError("unreachable")

    def _on_started(self) -> None:
        """Hook for readiness checks beyond PING."""

    def _wait_until_ready(self) -> None:
        address = self._ping_address()

        def ready() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise ServerError(
                    f"{self.name}: {self.binary} exited with code {code} during start-up\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
                )
            return _ping_raw(address)

        wait_for(
            ready,
            timeout=STARTUP_TIMEOUT,
            describe=lambda: (
                f"{self.name} ({self.binary}) to answer PING at {address}\n"
                f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
            ),
        )

    def _drop_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                client.close()  # type: ignore[no-untyped-call]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop: SIGTERM (flushes the AOF if enabled) and wait.

        Falls back to SIGKILL if the process does not exit within ``timeout``.
        """
        self._drop_client()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_process_group(proc)
        self._proc = None
        _live_processes.discard(self)

    def kill(self) -> None:
        """Crash the process with SIGKILL and reap it (no shutdown work at all).

        The whole process group is killed: a server forks children for AOF
        rewrites and replication syncs, and a child orphaned by a "crash"
        would otherwise linger writing into a directory we are deleting.
        """
        self._drop_client()
        proc = self._proc
        if proc is None:
            return
        _kill_process_group(proc)
        self._proc = None
        _live_processes.discard(self)

    def restart(self) -> None:
        """Graceful stop then start on the same port, socket path and directory."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Kill the process (if any) and delete its directory."""
        self.kill()
        self._removed = True
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(text.splitlines()[-lines:])

    # -- clients ------------------------------------------------------------

    def client(self) -> Any:
        """A sync client (``valkey.Valkey``) for assertions, owned (and closed) by this object.

        It is cached, so ``server.client().get(key)`` in a test leaks nothing;
        it is dropped whenever the process stops, so it never holds a dead
        connection across a restart.

        Typed ``Any``: valkey-py gives its sync and asyncio clients one set of command
        signatures, each returning ``Awaitable[Any] | Any`` and ``execute_command`` none at
        all, so under ``mypy --strict`` every reply would need a cast without checking more.
        """
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _admin(self) -> Any:
        """:meth:`client`, typed loosely: valkey-py annotates its sync and
        asyncio commands with one shared ``Awaitable | Any`` return type."""
        return self.client()

    # -- context manager ----------------------------------------------------

    def __enter__(self: _P) -> _P:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {state} dir={self.dir}>"


_P = TypeVar("_P", bound=_ManagedProcess)


# --------------------------------------------------------------------------
# valkey-server
# --------------------------------------------------------------------------


class ValkeyServer(_ManagedProcess):
    """One ``valkey-server`` process.

    Modes (combinable only as documented):

    * default: plain TCP on ``127.0.0.1:port`` (a free port unless given).
    * ``unix_socket=True``: listens ONLY on ``<dir>/valkey.sock`` (``port 0``,
      ``unixsocketperm 700``), so a client that silently fell back to TCP
      would fail.
    * ``tls=True``: a TLS listener on :attr:`tls_port` with freshly generated
      certificates (:attr:`tls`), *in addition to* the plain port. The plain
      port is kept on purpose: readiness checks, :meth:`client`,
      :meth:`commandstats` and the per-test FLUSHALL use it, so the admin
      path never depends on the TLS code under test. Tests exercise TLS by
      connecting to :attr:`tls_url`. ``tls_auth_clients`` is passed through
      (``"yes"`` requires the client certificate, ``"optional"`` verifies it
      only if sent, ``"no"`` ignores it).
    * ``persistence=True``: ``appendonly yes`` + ``appendfsync always``, so
      every acknowledged write survives a restart or even a SIGKILL.
      Otherwise nothing is persisted (``save ""``, ``appendonly no``).
    * ``replicaof=(host, port)``: starts as a replica of that server.
    """

    def __init__(
        self,
        *,
        name: str = "valkey",
        port: int | None = None,
        unix_socket: bool = False,
        tls: bool = False,
        tls_auth_clients: str = "optional",
        persistence: bool = False,
        replicaof: tuple[str, int] | None = None,
        extra_config: Iterable[str] = (),
    ) -> None:
        super().__init__(name=name)
        if unix_socket and (tls or port is not None):
            raise ValueError("a unix-socket server listens on nothing else")
        self._fixed_port = port is not None
        self._port = 0 if unix_socket else (port if port is not None else free_port())
        self._unix_path = self.dir / "valkey.sock" if unix_socket else None
        self._tls_port = free_port() if tls else None
        self.tls: TLSFiles | None = make_tls_files(self.dir / "tls") if tls else None
        self.tls_auth_clients = tls_auth_clients
        self.persistence = persistence
        self.replicaof = replicaof
        self.extra_config = list(extra_config)

    # -- configuration --------------------------------------------------------

    def _config_lines(self) -> list[str]:
        lines = [
            f"bind {HOST}",
            "protected-mode no",
            f"port {self._port}",
            f"dir {self.dir}",
            "daemonize no",
            'logfile ""',
            "loglevel notice",
            'save ""',
            f"appendonly {'yes' if self.persistence else 'no'}",
            "appendfsync always",
            "enable-debug-command yes",
            # The default 5s delay before a diskless full sync would make every
            # replica (and so every Sentinel group) start 5s slower.
            "repl-diskless-sync-delay 0",
        ]
        if self._unix_path is not None:
            lines += [f"unixsocket {self._unix_path}", "unixsocketperm 700"]
        if self.tls is not None:
            lines += [
                f"tls-port {self._tls_port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca_cert}",
                f"tls-auth-clients {self.tls_auth_clients}",
            ]
        if self.replicaof is not None:
            lines.append(f"replicaof {self.replicaof[0]} {self.replicaof[1]}")
        lines += self.extra_config
        return lines

    def _pick_new_port(self) -> bool:
        if self._fixed_port or self._unix_path is not None:
            return False
        self._port = free_port()
        if self._tls_port is not None:
            self._tls_port = free_port()
        return True

    def _ping_address(self) -> tuple[str, int] | str:
        if self._unix_path is not None:
            return str(self._unix_path)
        return (HOST, self._port)

    def _new_client(self) -> valkey.Valkey:
        if self._unix_path is not None:
            return valkey.Valkey(unix_socket_path=str(self._unix_path), socket_timeout=10)
        return valkey.Valkey(host=HOST, port=self._port, socket_timeout=10)

    def start(self) -> ValkeyServer:
        super().start()
        return self

    # -- addresses --------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The plain TCP port (0 for a unix-socket-only server)."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self._port)

    @property
    def unix_path(self) -> str | None:
        return str(self._unix_path) if self._unix_path is not None else None

    @property
    def url(self) -> str:
        """``valkey://127.0.0.1:PORT``, or ``unix:///path`` for a unix-socket server."""
        if self._unix_path is not None:
            return f"unix://{self._unix_path}"
        return f"valkey://{HOST}:{self._port}"

    @property
    def tls_port(self) -> int | None:
        return self._tls_port

    @property
    def tls_url(self) -> str:
        if self._tls_port is None:
            raise ValueError(f"{self.name} was not started with tls=True")
        return f"valkeys://{HOST}:{self._tls_port}"

    def ssl_kwargs(self, *, client_cert: bool = True) -> dict[str, str]:
        """Keyword arguments that make valkey-py verify and talk to the TLS port.

        They work for ``valkey.Valkey(...)``, ``valkey.asyncio.Valkey(...)`` and
        ``from_url("valkeys://...", **kwargs)`` alike.
        """
        if self.tls is None:
            raise ValueError(f"{self.name} was not started with tls=True")
        kwargs = {"ssl_ca_certs": str(self.tls.ca_cert), "ssl_cert_reqs": "required"}
        if client_cert:
            kwargs["ssl_certfile"] = str(self.tls.client_cert)
            kwargs["ssl_keyfile"] = str(self.tls.client_key)
        return kwargs

    # -- assertions helpers -----------------------------------------------------

    def commandstats(self) -> dict[str, int]:
        """Calls per command since start or the last :meth:`reset_stats`.

        Keys are lower-case command names as Valkey reports them, e.g.
        ``"set"``, ``"evalsha"``, ``"client|setinfo"``.
        """
        info = self._admin().info("commandstats")
        return {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: zero commandstats and the other INFO counters."""
        self.client().config_resetstat()

    def flushall(self) -> None:
        self.client().flushall()

    def role(self) -> str:
        """``"master"`` or ``"slave"`` as INFO replication reports it."""
        return str(self._admin().info("replication")["role"])


@dataclass
class Topology:
    """One deployment shape: its name, the ``hosts`` value, and its servers.

    Built by the ``topology`` fixture in conftest.py. ``servers`` are the
    primaries behind ``hosts``, in the same order, for reading keys or
    commandstats directly (through their plain port).
    """

    name: str
    hosts: list[Any]
    servers: list[ValkeyServer]


# --------------------------------------------------------------------------
# valkey-sentinel and a primary/replica/sentinel group
# --------------------------------------------------------------------------


class SentinelServer(_ManagedProcess):
    """One ``valkey-sentinel`` process monitoring a single primary.

    Sentinel rewrites its own config file (it records its id, the replicas it
    discovered, and failovers), which is why the file lives in the private
    directory and is never rewritten by us after the first start.
    """

    binary = server_command("sentinel")

    def __init__(
        self,
        *,
        primary: tuple[str, int],
        master_name: str = "mymaster",
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        known_replicas: Iterable[tuple[str, int]] = (),
        name: str = "sentinel",
    ) -> None:
        super().__init__(name=name)
        self._port = free_port()
        self.primary = primary
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.known_replicas = list(known_replicas)

    def _config_lines(self) -> list[str]:
        m = self.master_name
        lines = [
            f"bind {HOST}",
            "protected-mode no",
            f"port {self._port}",
            f"dir {self.dir}",
            "daemonize no",
            'logfile ""',
            "sentinel resolve-hostnames no",
            f"sentinel monitor {m} {self.primary[0]} {self.primary[1]} {self.quorum}",
            f"sentinel down-after-milliseconds {m} {self.down_after_ms}",
            f"sentinel failover-timeout {m} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {m} 1",
        ]
        # Declaring the replica up front means Sentinel does not depend on
        # seeing it in the primary's INFO (refreshed only every 10s).
        lines += [f"sentinel known-replica {m} {h} {p}" for h, p in self.known_replicas]
        return lines

    def _pick_new_port(self) -> bool:
        self._port = free_port()
        return True

    def _ping_address(self) -> tuple[str, int] | str:
        return (HOST, self._port)

    def _new_client(self) -> valkey.Valkey:
        return valkey.Valkey(host=HOST, port=self._port, socket_timeout=10)

    def start(self) -> SentinelServer:
        super().start()
        return self

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self._port)

    def master_addr(self) -> tuple[str, int] | None:
        """``SENTINEL GET-MASTER-ADDR-BY-NAME`` as ``(host, port)``."""
        reply = self._admin().sentinel_get_master_addr_by_name(self.master_name)
        if not reply:
            return None
        host, port = reply
        host = host.decode() if isinstance(host, bytes) else str(host)
        return host, int(port)

    def master_state(self) -> dict[str, Any]:
        """``SENTINEL MASTER <name>`` parsed by valkey-py (with ``is_*`` flags)."""
        state: dict[str, Any] = self._admin().sentinel_master(self.master_name)
        return state

    def replica_states(self) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = self._admin().sentinel_slaves(self.master_name)
        return states


class SentinelGroup:
    """A primary, one replica and one Sentinel (quorum 1) watching them.

    ``down-after-milliseconds`` is 1000 and ``failover-timeout`` 5000 so that
    :meth:`failover_by_killing_primary` completes in a few seconds. After a
    failover :attr:`primary` and :attr:`replica` are swapped to match reality
    (the old primary stays dead until someone calls ``start()`` on it).
    """

    def __init__(
        self,
        *,
        master_name: str = "mymaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.master_name = master_name
        self.primary = ValkeyServer(name="primary")
        self.replica = ValkeyServer(name="replica", replicaof=self.primary.address)
        self.sentinel = SentinelServer(
            primary=self.primary.address,
            master_name=master_name,
            down_after_ms=down_after_ms,
            failover_timeout_ms=failover_timeout_ms,
            known_replicas=[self.replica.address],
        )

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The ``sentinels`` list as users configure it."""
        return [self.sentinel.address]

    @property
    def servers(self) -> list[ValkeyServer]:
        return [self.primary, self.replica]

    def start(self) -> SentinelGroup:
        """Start all three and wait until Sentinel could fail over right away."""
        try:
            self.primary.start()
            self.replica.start()
            self.wait_replica_in_sync(self.replica)
            self.sentinel.start()
            self.wait_sentinel_ready()
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_replica_in_sync(self, replica: ValkeyServer, timeout: float = STARTUP_TIMEOUT) -> None:
        def in_sync() -> bool:
            info = replica._admin().info("replication")
            return bool(info.get("master_link_status") == "up")

        wait_for(
            in_sync,
            timeout=timeout,
            describe=lambda: f"replica to sync\n{replica.log_tail()}",
        )

    def wait_sentinel_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until Sentinel sees a healthy primary and a connected replica."""
        primary_port = self.primary.port
        replica_port = self.replica.port

        def ready() -> bool:
            master = self.sentinel.master_state()
            if (
                int(master["port"]) != primary_port
                or master["is_sdown"]
                or master["is_odown"]
                or master["is_disconnected"]
            ):
                return False
            return any(
                int(r["port"]) == replica_port
                and not r["is_disconnected"]
                and not r["is_sdown"]
                and r.get("master-link-status") == "ok"
                for r in self.sentinel.replica_states()
            )

        wait_for(
            ready,
            timeout=timeout,
            interval=0.02,
            describe=lambda: f"sentinel to see the group\n{self.sentinel.log_tail()}",
        )

    def failover_by_killing_primary(
        self, *, timeout: float = 30.0, sync_replica: bool = True
    ) -> tuple[str, int]:
        """SIGKILL the primary and wait until Sentinel has promoted the replica.

        With ``sync_replica`` (default) a ``WAIT 1`` runs first, so every write
        acknowledged before the call is on the replica and survives the
        failover; tests can then assert on the data. Returns the new primary's
        ``(host, port)`` once Sentinel both reports it and has finished the
        failover (valkey-py's Sentinel client only trusts a primary that is
        not flagged down, so "reported" alone would still fail to connect).
        """
        old, new = self.primary, self.replica
        if sync_replica:
            acked = old._admin().wait(1, 5000)
            if acked < 1:
                raise ServerError("replica did not acknowledge the primary's writes in 5s")
        old.kill()
        expected = new.address

        def promoted() -> tuple[str, int] | None:
            if self.sentinel.master_addr() != expected:
                return None
            state = self.sentinel.master_state()
            done = (
                int(state["port"]) == expected[1]
                and state["is_master"]
                and not state["is_sdown"]
                and not state["is_odown"]
                and "failover_in_progress" not in str(state.get("flags", ""))
            )
            return expected if done and new.role() == "master" else None

        address = wait_for(
            promoted,
            timeout=timeout,
            interval=0.05,
            describe=lambda: f"sentinel failover to {expected}\n{self.sentinel.log_tail()}",
        )
        self.primary, self.replica = new, old
        return address

    def cleanup(self) -> None:
        # Sentinel first, so it does not react to the servers going away.
        for process in (self.sentinel, self.replica, self.primary):
            process.cleanup()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


@contextlib.contextmanager
def running(*processes: _P) -> Iterator[list[_P]]:
    """Start several processes and clean all of them up afterwards."""
    with contextlib.ExitStack() as stack:
        for process in processes:
            stack.enter_context(process)
        yield list(processes)
