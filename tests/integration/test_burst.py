"""A room of the example chat under a burst: no message that the layer accepted is lost.

The example runs as ``example/run`` runs it: a private valkey-server and two uvicorn processes,
started through the example's launcher. Many real websocket clients join one room, half on
each process, and all send a few messages 5 ms apart (``example/burst.py``); every client
should then receive every message of the room, its own included.

Two things are checked on both of this package's layers:

- with a capacity that holds the whole burst, every client gets every message, once each and
  in each sender's order;
- with the default capacity, a message may be refused, but only where it is sent: whatever a
  client misses must be a member that ``group_send`` skipped as full, counted in the sending
  process (``stats().group_members_full``, read from the example's ``/stats/`` view), never a
  message that the layer took and then dropped in the receiving process
  (``dropped_from_buffers``).

How long the room takes to drain depends on the machine, so nothing here is timed: the clients
wait until every message has arrived, or until the room has been quiet for a moment and the
servers' counters account for every message that has not (``burst.burst``'s ``accounted``); a
quiet room whose counters do not add up is waited on until a generous deadline.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example"
LAYERS = (
    "channels_valkey.core.ValkeyChannelLayer",
    "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
)
LAYER_IDS = ("core", "pubsub")
#: (clients, messages per client): 4,000 and 72,000 deliveries.
BURSTS = ((20, 10), (60, 20))
BURST_IDS = [f"{clients}x{messages}" for clients, messages in BURSTS]
#: Enough for the largest burst: each process's queue gets one entry per group_send, and each
#: channel one message per group_send.
ROOMY = {"capacity": max(clients * messages for clients, messages in BURSTS)}
QUIET = 1.0  # seconds without a message before the servers' counters are consulted
DRAIN_TIMEOUT = 40.0  # seconds after the last send; only reached when something is wrong


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLE_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


launcher = _load("launcher")
burst = _load("burst")


@pytest.fixture(scope="module")
def example(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The example on ``request.param`` = (layer class, extra layer options or None)."""
    backend, config = request.param
    running = launcher.Example(ports=[0, 0], backend=backend, sink=print, layer_config=config)
    try:
        try:
            running.start()
        except launcher.StartupError as exc:
            pytest.fail(f"the example did not start: {exc}")
        yield running
    finally:
        running.stop()


def _counters_since(servers: list[str], before: dict[str, float]) -> dict[str, float]:
    now = burst.layer_stats(servers)
    assert now is not None, "the example's /stats/ view has no counters for this layer"
    return {name: now[name] - before.get(name, 0) for name in now}


async def _run(example: Any, clients: int, messages: int) -> tuple[Any, dict[str, float]]:
    """One burst; what the clients got, and the servers' counters over the burst."""
    servers = [server.url for server in example.servers]
    before = burst.layer_stats(servers)
    assert before is not None, "the example's /stats/ view has no counters for this layer"
    sends = clients * messages

    def accounted(delivered: int) -> bool:
        counted = _counters_since(servers, before)
        missing = counted["group_members_full"] + counted["dropped_from_buffers"]
        return counted["group_sends"] >= sends and delivered + missing >= clients * sends

    result = await burst.burst(
        servers,
        clients,
        messages,
        quiet=QUIET,
        timeout=DRAIN_TIMEOUT,
        accounted=accounted,
    )
    return result, _counters_since(servers, before)


def _what_arrived(result: Any, counted: dict[str, float]) -> str:
    summary = result.summary()
    return (
        f"{summary['delivered']} of {summary['expected']} delivered, "
        f"{summary['lost']} missing at {summary['clients_missing_some']} clients, "
        f"{summary['duplicates']} duplicates, {summary['reordered']} out of order; "
        f"group_send skipped {counted['group_members_full']:.0f} members as full, "
        f"receivers dropped {counted['dropped_from_buffers']:.0f} from full buffers"
    )


@pytest.mark.parametrize("example", [(b, ROOMY) for b in LAYERS], indirect=True, ids=LAYER_IDS)
@pytest.mark.parametrize(("clients", "messages"), BURSTS, ids=BURST_IDS)
async def test_a_burst_the_capacity_holds_reaches_every_client_whole(
    example: Any, clients: int, messages: int
) -> None:
    result, counted = await _run(example, clients, messages)
    what = _what_arrived(result, counted)
    assert counted["group_sends"] == clients * messages, what
    assert result.lost == 0, what
    assert result.duplicates == 0, what
    assert result.reordered == 0, what
    assert result.foreign == 0, what
    assert result.complete, what


@pytest.mark.parametrize("example", [(b, None) for b in LAYERS], indirect=True, ids=LAYER_IDS)
@pytest.mark.parametrize(("clients", "messages"), BURSTS, ids=BURST_IDS)
async def test_with_the_default_capacity_only_the_sender_refuses_messages(
    example: Any, clients: int, messages: int
) -> None:
    result, counted = await _run(example, clients, messages)
    what = _what_arrived(result, counted)
    assert counted["group_sends"] == clients * messages, what
    assert counted["dropped_from_buffers"] == 0, what
    assert result.lost == counted["group_members_full"], what
    assert result.duplicates == 0, what
    assert result.reordered == 0, what
    assert result.foreign == 0, what
