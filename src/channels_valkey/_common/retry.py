"""The one retry policy: how long the layers keep trying a server that does not answer, and
how long they wait between attempts.

Every loop that tries again after a connection error follows it: a command on the lane
(``_common.lane``), a command on a cluster (``_queue.cluster``, ``_pubsub.cluster``), a reader
reconnecting (``_queue.reader``) and a pub/sub subscriber reconnecting (``_pubsub.subscriber``).

- *Deadline*: attempts go on for :data:`DEADLINE` seconds after the first one began (for a
  reader, after it lost its connection); then the error is reported, as
  :class:`~channels_valkey.exceptions.ServerUnreachable`. A restart or failover shorter than
  that is ridden out.
- *Backoff*: exponential from :data:`FIRST_PAUSE` up to :data:`MAX_PAUSE`, each pause drawn
  between half and all of its step ("equal jitter"), so processes that lost a server together
  do not reconnect in lockstep. A pause never runs past the deadline: the last attempt starts
  on time.

An attempt that has started is not interrupted: the time to ``ServerUnreachable`` is the
deadline plus whatever the attempt in flight then takes. A connect is bounded by
``socket_connect_timeout`` and a reply by ``socket_timeout`` (5 s each by default). So a
command raises within ``DEADLINE`` plus one connect timeout, and a waiting ``receive()``
within ``DEADLINE`` plus two (its reader starts counting when its first attempt has failed):
about 10 s against a host that refuses or closes connections, at most 20 s by default against
one that does not answer. A Sentinel entry asks each sentinel in turn, a cluster entry each
startup node, so with several unreachable ones an attempt takes a connect timeout for each.
A pub/sub subscription (``new_channel``, ``group_add``, a first ``receive``) waits for its
confirmation ``DEADLINE`` seconds, while its connection keeps trying in the background.

valkey-py can retry too (a ``Retry`` on each connection, and a cluster client's own attempts).
Under this policy those retries would multiply the attempts, so the layers give connections
no retries of their own (``_common.connections.connection_kwargs``,
``_common.connections.build_cluster``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from channels_valkey.exceptions import ServerUnreachable

T = TypeVar("T")

#: Errors after which an attempt is worth making again, on a fresh connection.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    ValkeyConnectionError,
    ValkeyTimeoutError,
    ConnectionError,
    TimeoutError,
)

#: Seconds of failed attempts before the error is reported.
DEADLINE = 10.0
#: The first pause; each later one doubles, up to :data:`MAX_PAUSE`.
FIRST_PAUSE = 0.05
MAX_PAUSE = 1.0


def pause(failures: int) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row (1 for the first)."""
    step = min(MAX_PAUSE, FIRST_PAUSE * 2.0 ** max(0, failures - 1))
    return random.uniform(step / 2, step)


class Outage:
    """The failed attempts of one operation so far: when to try again, when to give up."""

    __slots__ = ("failures", "started")

    def __init__(self, started: float | None = None) -> None:
        #: ``time.monotonic()`` when the first attempt began (or the connection was lost).
        self.started = time.monotonic() if started is None else started
        self.failures = 0

    def next_pause(self) -> float | None:
        """After a failed attempt: seconds to wait before the next one, or ``None`` once the
        deadline has passed and the error should be reported."""
        self.failures += 1
        left = self.started + DEADLINE - time.monotonic()
        if left <= 0:
            return None
        return min(pause(self.failures), left)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    retried: tuple[type[Exception], ...],
    where: str,
) -> T:
    """``await attempt()`` until it succeeds, trying again after the ``retried`` errors; once
    the deadline has passed, the last one is raised as :class:`ServerUnreachable` naming
    ``where``. Any other error is raised at once."""
    outage = Outage()
    while True:
        try:
            return await attempt()
        except retried as error:
            delay = outage.next_pause()
            if delay is None:
                raise ServerUnreachable(where, error) from error
        await asyncio.sleep(delay)
