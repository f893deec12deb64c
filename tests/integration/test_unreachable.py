"""How long a command waits for a server it cannot reach, and that it waits no longer.

The retry policy (``_common.retry``) keeps trying for ``DEADLINE`` seconds, then every command of
both layers raises :class:`ServerUnreachable`. The attempt in flight at the deadline is not cut
short, and a reader (behind a waiting ``receive()``) starts counting when its first attempt
fails, so the documented bound is ``DEADLINE`` plus two connect timeouts.

Three ways a server can be unreachable, on every entry kind whose path differs (a server, a
Sentinel entry with no reachable sentinel, a cluster with no reachable startup node):

- *refused*: nothing listens on the port (a socket is bound there, so nothing else can be);
- *silent*: connecting never completes, the way a host that drops packets behaves (a listener
  whose accept queue is full: the kernel ignores further connection attempts);
- *closing*: every connection is accepted and closed at once (a proxy before a dead node);
- *mute*: connections are accepted and never answered (a server frozen, or a proxy whose
  backend vanished without a word): each attempt waits out the read timeout.

Each case runs concurrently with the others, so a test lasts about one bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from channels_valkey._common import retry
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import ServerUnreachable
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.proxy import accept_and_close
from support.servers import ValkeyServer

pytestmark = pytest.mark.slow

#: valkey-py's connect timeout, as the layer sets it (``socket_connect_timeout``) and as a
#: Sentinel connection has it (its ``socket_timeout``, which a connect defaults to); also
#: valkey-py's default read timeout (``socket_timeout``), which bounds a mute server's attempt.
CONNECT_TIMEOUT = 5.0

#: The documented bound: the deadline, the attempt in flight when it passes, and for a reader
#: the failed attempt before it started counting.
BOUND = retry.DEADLINE + 2 * CONNECT_TIMEOUT

#: Room for a loaded machine to be late: a correct implementation is well inside the bound.
SLACK = 5.0


@contextlib.contextmanager
def refused() -> Iterator[int]:
    """A port that refuses connections: bound, so taken, but not listening."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@contextlib.contextmanager
def silent() -> Iterator[int]:
    """A port where a connect never completes: a listener whose accept queue is full, so the
    kernel drops further connection requests, which then wait out the connect timeout."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(3):  # a backlog of 0 still queues one; fill it with room to spare
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port


@contextlib.contextmanager
def mute() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them into a large backlog) and
    never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield listener.getsockname()[1]


@contextlib.asynccontextmanager
async def unreachable(kind: str) -> AsyncIterator[int]:
    if kind == "mute":
        with mute() as port:
            yield port
        return
    if kind == "closing":
        async with accept_and_close() as (_, port):
            yield port
        return
    with refused() if kind == "refused" else silent() as port:
        yield port


def entry(kind: str, port: int) -> Any:
    if kind == "server":
        return f"valkey://127.0.0.1:{port}"
    if kind == "sentinel":
        return {"sentinels": [("127.0.0.1", port)], "master_name": "mymaster"}
    return {"cluster": True, "startup_nodes": [("127.0.0.1", port)]}


Call = Callable[[Any], Awaitable[object]]


async def pubsub_group_add(layer: ValkeyPubSubChannelLayer) -> None:
    """``group_add`` of a channel this process receives on: a waiting ``receive()`` makes it
    its own. A second one, started after the ``group_add``, keeps it so when the first gives
    up (freeing the channel would take it out of the group and end the ``group_add``)."""
    first = asyncio.ensure_future(layer.receive("mine"))
    await asyncio.sleep(0)  # the receive makes the channel local before it subscribes
    adding = asyncio.ensure_future(layer.group_add("room", "mine"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(layer.receive("mine"))
    try:
        await adding
    finally:
        for receiving in (first, second):
            receiving.cancel()
        await asyncio.gather(first, second, return_exceptions=True)


CORE_CALLS: dict[str, Call] = {
    "send": lambda layer: layer.send("jobs", {"type": "m"}),
    "group_add": lambda layer: layer.group_add("room", "jobs"),
    "group_send": lambda layer: layer.group_send("room", {"type": "m"}),
    "group_discard": lambda layer: layer.group_discard("room", "jobs"),
    "receive": lambda layer: layer.receive("jobs"),
}

PUBSUB_CALLS: dict[str, Call] = {
    "send": lambda layer: layer.send("jobs", {"type": "m"}),
    "group_send": lambda layer: layer.group_send("room", {"type": "m"}),
    "new_channel": lambda layer: layer.new_channel(),
    "receive": lambda layer: layer.receive("jobs"),
    "group_add": pubsub_group_add,
}


async def time_to_fail(layer: Any, call: Call) -> tuple[float, BaseException | None]:
    """Seconds until ``call`` raised, and what it raised (``None`` if it returned, or if it
    was still waiting well past the bound)."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(call(layer), BOUND + SLACK + 1)
    except asyncio.TimeoutError:
        return time.monotonic() - started, None
    except Exception as error:
        return time.monotonic() - started, error
    finally:
        await layer.close()
    return time.monotonic() - started, None


@pytest.mark.parametrize("kind", ["server", "sentinel", "cluster"])
async def test_every_command_gives_up_within_the_documented_time(kind: str) -> None:
    """Each command of both layers, against each way of being unreachable, keeps trying for
    the deadline and raises ServerUnreachable, naming the address, within the bound."""
    async with (
        unreachable("refused") as refused_port,
        unreachable("silent") as silent_port,
        unreachable("closing") as closing_port,
        unreachable("mute") as mute_port,
    ):
        cases: dict[str, Awaitable[tuple[float, BaseException | None]]] = {}
        for failure, port in (
            ("refused", refused_port),
            ("silent", silent_port),
            ("closing", closing_port),
            ("mute", mute_port),
        ):
            for name, call in CORE_CALLS.items():
                layer: Any = ValkeyChannelLayer(hosts=[entry(kind, port)])
                cases[f"core {name} {failure} :{port}"] = time_to_fail(layer, call)
            for name, call in PUBSUB_CALLS.items():
                layer = ValkeyPubSubChannelLayer(hosts=[entry(kind, port)])
                cases[f"pubsub {name} {failure} :{port}"] = time_to_fail(layer, call)
        results = dict(zip(cases, await asyncio.gather(*cases.values()), strict=True))

    wrong = {
        case: (round(seconds, 1), repr(error))
        for case, (seconds, error) in results.items()
        if not isinstance(error, ServerUnreachable)
        or case.rsplit(":", 1)[1] not in str(error)
        or not retry.DEADLINE <= seconds <= BOUND + SLACK
    }
    assert not wrong, f"expected ServerUnreachable after {retry.DEADLINE:g}-{BOUND:g} s"


@pytest.mark.parametrize("layer_class", [ValkeyChannelLayer, ValkeyPubSubChannelLayer])
async def test_a_send_during_a_restart_shorter_than_the_deadline_goes_through(
    persistent_server: ValkeyServer, layer_class: type[Any]
) -> None:
    """The other side of the deadline: a server that is back before it is ridden out."""
    layer = layer_class(hosts=[persistent_server.url])
    await layer.send("warmup", {"type": "m"})  # connections are open when the server goes
    await asyncio.to_thread(persistent_server.stop)
    sending = asyncio.create_task(layer.send("jobs", {"type": "during.restart"}))
    await asyncio.sleep(retry.DEADLINE / 3)  # the downtime: the waiting is the test
    assert not sending.done()
    await asyncio.to_thread(persistent_server.start)
    await asyncio.wait_for(sending, retry.DEADLINE)
    if layer_class is ValkeyChannelLayer:
        assert await asyncio.wait_for(layer.receive("jobs"), 10) == {"type": "during.restart"}
    await layer.close()
