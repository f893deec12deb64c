"""Health checks: a ``PING`` before reusing a connection that has been quiet for too long.

Managed Valkey services, load balancers and NAT gateways drop connections that stay idle, and
a dropped connection may give no sign of it: no FIN, no RST. A command written to it is lost
in silence, and its sender waits out the read timeout (``socket_timeout``, 5 s unless set
otherwise; without one, until TCP gives up, many minutes) before trying again. So a connection
that has sent nothing for longer than ``health_check_interval`` seconds is pinged before its
next command, with a bounded wait; when no answer comes, it is closed and the command goes out
on a fresh connection.

valkey-py has an option of the same name, but runs its check inside ``connect()`` too, where a
failed check reconnects inside itself: against an endpoint that accepts and at once closes (a
proxy in front of a dead node) that never ends. This check runs only on a connection that is
already up, tries once, and leaves reconnecting to the command's own retry. The option is
therefore taken out of the options handed to valkey-py, whose own check stays off.

Connections owned by one long-lived task that reads while another writes (pub/sub
subscribers) must not be probed: the probe's read would race the owner's. Those opt out with
:func:`without_health_check`; they watch their own liveness.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import ResponseError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from channels_valkey.exceptions import ConfigurationError

logger = logging.getLogger(__name__)

C = TypeVar("C", bound=AbstractConnection)

#: Seconds of quiet after which a connection is pinged before its next command. Shorter than
#: the idle timeouts of common load balancers and managed services (minutes).
DEFAULT_INTERVAL = 30.0

#: How long the probe waits for PONG when the connection has no ``socket_connect_timeout``.
DEFAULT_PROBE_TIMEOUT = 5.0


def take_interval(options: dict[str, Any], where: str) -> float:
    """Remove ``health_check_interval`` from connection ``options`` (so valkey-py's own check
    stays off) and return the interval this module's check uses; ``0`` turns it off."""
    interval = options.pop("health_check_interval", DEFAULT_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
        raise ConfigurationError(
            f"{where}: health_check_interval must be a number of seconds >= 0, not {interval!r}"
        )
    return float(interval)


class _HealthChecked(AbstractConnection):
    """Mixed in before a valkey-py connection class by :func:`health_checked`."""

    health_check_after: float = 0.0  # set on each generated class
    _probe_enabled = True
    _quiet_since = 0.0

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[safe-super,no-untyped-call]
        self._quiet_since = time.monotonic()

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        # Quiet is measured from the last command sent (its answer follows within the read
        # timeout), so reads, the hot path's other half, carry no bookkeeping.
        now = time.monotonic()
        if (
            self._probe_enabled
            and self.is_connected
            and now - self._quiet_since > self.health_check_after
        ):
            await self._probe()
        self._quiet_since = now
        await super().send_packed_command(command, check_health)

    async def _probe(self) -> None:
        """PING once; on no answer close the connection, which the command then reopens."""
        timeout = probe_timeout(self)
        try:
            await super().send_packed_command(self.pack_command("PING"), check_health=False)
            reply = await super().read_response(timeout=timeout)
        except ResponseError:
            reply = b"PONG"  # refused (an ACL, a loading server), but it answered
        except (ValkeyConnectionError, ValkeyTimeoutError, OSError) as error:
            reply = error
        if reply in (b"PONG", "PONG"):
            return
        logger.info(
            "Reconnecting to %s: no answer to a health-check PING after %.0f s of quiet (%s)",
            self._host_error(),
            time.monotonic() - self._quiet_since,
            "timed out" if reply is None else reply,
        )
        await self.disconnect(nowait=True)


def probe_interval(connection: AbstractConnection) -> float:
    """Seconds of quiet after which ``connection`` must be probed; 0 when it never is. Used
    by owners that write to a connection themselves (``_common.lane``), which probe it their way."""
    if isinstance(connection, _HealthChecked) and connection._probe_enabled:
        return connection.health_check_after
    return 0.0


def probe_timeout(connection: AbstractConnection) -> float:
    """How long a probe waits for ``PONG``: the connect timeout, which bounds a fresh start."""
    return float(connection.socket_connect_timeout or DEFAULT_PROBE_TIMEOUT)


_classes: dict[tuple[type[Any], float], type[Any]] = {}


def health_checked(base: type[C], interval: float) -> type[C]:
    """``base`` with the health check mixed in, or ``base`` itself when ``interval`` is 0.
    One class per ``(base, interval)``, made on first use."""
    if not interval:
        return base
    checked = _classes.get((base, interval))
    if checked is None:
        checked = _classes[base, interval] = type(
            f"HealthChecked{base.__name__}",
            (_HealthChecked, base),
            {"health_check_after": interval, "__module__": __name__},
        )
    return checked


def without_health_check(connection: AbstractConnection) -> AbstractConnection:
    """``connection``, never probed (its owner reads while others write)."""
    if isinstance(connection, _HealthChecked):
        connection._probe_enabled = False
    return connection
