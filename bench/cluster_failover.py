"""What ``wait_for_replicas`` saves across a primary's crash, and what it costs.

    ./bench/run --failover [--runs 5] [--scenarios loopback,backlog,lag]
    python bench/cluster_failover.py [...]   # any Python with this package installed

For each scenario, starts a private Valkey Cluster of 3 primaries with a replica each
(:mod:`localcluster`), then, alternating ``wait_for_replicas=0`` and ``=1`` (``replica_timeout``
1 s), ``--runs`` times each:

1. a sender numbers messages on a normal channel (a new one per run), a receiver drains it,
   both through :class:`~channels_valkey.core.ValkeyChannelLayer` in this process, the sender
   at most ``WINDOW`` messages ahead of the receiver;
2. after ``--before`` seconds, the primary serving the channel's queue is SIGKILLed, without a
   ``WAIT`` first, while sends go on; its replica takes over (``cluster-node-timeout`` 1 s);
3. ``--down`` seconds after the failover, the killed node is started again with its
   ``nodes.conf``: it rejoins as a replica of the node that took over and resyncs, so the new
   primary has a replica again;
4. traffic goes on for ``--after`` seconds once the cluster is healthy; then, once the sender's
   last send returned, it sends a last message; the receiver drains up to it, and what is
   still queued is counted;
5. counted: sends that returned (acknowledged), sends that raised (by exception), messages
   received, **lost** (acknowledged but never received), **duplicates** (received more than
   once), received out of order, and received although their send raised.

Scenarios:

- ``loopback``: as is; the receiver takes each message as soon as it can, so the queue is
  nearly always empty;
- ``backlog``: the receiver spends ``--delay-ms`` on each message, so up to ``WINDOW``
  messages wait in the queue;
- ``lag``: as ``backlog``, and every replication stream is held ``--lag-ms`` by a proxy
  (:mod:`lagproxy`, the nodes announce its ports), which drops what it still holds when the
  primary is killed: a replica that lags behind, as over a network, and a crash that loses
  what was on its way.

Then the steady-state cost, with no failover (``loopback`` and ``lag``, the receiver as fast as
it can): sends/s and send latency p50/p99, ``--runs`` times for each setting, interleaved.

Prints the tables (``failover_report.py``) and writes
``bench/results/failover-<UTC time>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from failover_report import fmt_ms, markdown  # noqa: E402
from localcluster import LocalCluster, Node, die_with_parent, wait_for  # noqa: E402
from machine import cores_and_platform, load_average  # noqa: E402
from procs import log  # noqa: E402
from resultfiles import RESULTS, save_results, stamp_of  # noqa: E402
from stats import quantile  # noqa: E402

#: Messages the sender may have sent and the receiver not yet received.
WINDOW = 50
#: Channel capacity: well above WINDOW, so no send meets a full channel.
CAPACITY = 1000
PREFIX = "asgi"
TEXT = "x" * 100


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    lag_ms: float = 0.0  # replication streams held this long by lagproxy
    delay_ms: float = 0.0  # the receiver's time per message
    steady: bool = False  # also measure the steady-state cost here


def scenarios(options: argparse.Namespace) -> list[Scenario]:
    known = {
        "loopback": Scenario("loopback", "loopback, the receiver as fast as it can", steady=True),
        "backlog": Scenario(
            "backlog",
            f"loopback, the receiver {options.delay_ms:g} ms per message (a backlog)",
            delay_ms=options.delay_ms,
        ),
        "lag": Scenario(
            "lag",
            f"replication held {options.lag_ms:g} ms, the receiver {options.delay_ms:g} ms "
            "per message",
            lag_ms=options.lag_ms,
            delay_ms=options.delay_ms,
            steady=True,
        ),
    }
    chosen = [name.strip() for name in options.scenarios.split(",") if name.strip()]
    unknown = set(chosen) - set(known)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return [known[name] for name in chosen]


class Proxy:
    """``lagproxy.py`` in a process of its own, in front of every node of ``cluster``."""

    def __init__(self, cluster: LocalCluster, lag_ms: float) -> None:
        pairs = [f"{node.announce_port}:{node.port}" for node in cluster.nodes]
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "lagproxy.py"), str(lag_ms), *pairs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        self._expect("ready")

    def _expect(self, line: str) -> None:
        assert self.process.stdout is not None
        got = self.process.stdout.readline().strip()
        if got != line:
            raise RuntimeError(f"lagproxy: expected {line!r}, got {got!r}")

    def _tell(self, command: str, node: Node) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command} {node.announce_port}\n")
        self.process.stdin.flush()

    def crash(self, node: Node) -> None:
        """Reset every connection to ``node``, drop what the proxy still holds for them, and
        refuse new ones."""
        self._tell("crash", node)
        self._expect(f"crashed {node.announce_port}")

    def revive(self, node: Node) -> None:
        """Accept connections to ``node`` again."""
        self._tell("revive", node)
        self._expect(f"revived {node.announce_port}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def now() -> float:
    return time.perf_counter()


class Traffic:
    """A numbering sender and a checking receiver on one channel of one layer."""

    def __init__(self, layer: Any, channel: str, delay: float = 0.0) -> None:
        self.layer = layer
        self.channel = channel
        self.delay = delay  # the receiver's seconds per message
        self.acknowledged: set[int] = set()
        self.failed: dict[int, str] = {}  # number -> exception name
        self.received: Counter[int] = Counter()
        self.out_of_order = 0
        self.latencies: list[tuple[float, float]] = []  # (start, seconds) per returned send
        self.sent = 0
        self.stop_sending = asyncio.Event()
        self._progress = asyncio.Event()
        self._highest = -1
        self._last: int | None = None
        self.errors: list[str] = []
        self.trace = ""  # the traceback of the first unexpected exception of a send

    async def send(self) -> None:
        from channels_valkey.exceptions import NotReplicated

        number = 0
        while not self.stop_sending.is_set():
            await self._window()
            self.sent = number + 1  # attempted, counted before it may be received
            began = now()
            try:
                await self.layer.send(self.channel, {"type": "seq", "n": number, "text": TEXT})
            except NotReplicated:
                self.failed[number] = "NotReplicated"
            except Exception as error:  # counted, and the sender goes on
                self.failed[number] = type(error).__name__
                self.errors.append(f"#{number}: {type(error).__name__}: {error}"[:2000])
                if not self.trace:
                    self.trace = traceback.format_exc()[-6000:]
            else:
                self.acknowledged.add(number)
                self.latencies.append((began, now() - began))
            number += 1

    async def finish(self, sender: asyncio.Future[None], timeout: float = 30.0) -> bool:
        """Stop ``sender`` (the task running :meth:`send`) and, once its last send returned,
        send the last message (retrying until a send returns); ``False`` on timeout.

        Sent any earlier, the last message could overtake a send still in flight: the receiver
        would stop before that message arrived."""
        self.stop_sending.set()
        await asyncio.wait_for(sender, timeout)
        deadline = now() + timeout
        while now() < deadline:
            try:
                await self.layer.send(self.channel, {"type": "seq", "n": -1, "last": True})
            except Exception as error:
                self.errors.append(f"last: {type(error).__name__}: {error}")
                await asyncio.sleep(0.1)
                continue
            return True
        return False

    async def _window(self) -> None:
        """Wait while WINDOW messages are unreceived; give up waiting after a second (lost
        messages never arrive, so they must not hold the window for good)."""
        deadline = now() + 1.0
        while self.sent - len(self.received) >= WINDOW and now() < deadline:
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), max(0.0, deadline - now()))

    def lost(self) -> set[int]:
        """Acknowledged sends that were never received."""
        return self.acknowledged - set(self.received)

    def duplicates(self) -> int:
        """Deliveries beyond the first of each message."""
        return sum(count - 1 for count in self.received.values())

    @staticmethod
    async def stop(*tasks: asyncio.Future[None]) -> None:
        """Cancel the sender and receiver tasks and wait until they have ended."""
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def receive(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            if message.get("last"):
                return
            number = int(message["n"])
            if self.received[number] == 0 and number < self._highest:
                self.out_of_order += 1
            self.received[number] += 1
            self._highest = max(self._highest, number)
            self._progress.set()
            if self.delay:
                await asyncio.sleep(self.delay)


@dataclass
class FailoverRun:
    wait_for_replicas: int
    index: int
    channel: str
    victim: str = ""
    sent: int = 0
    acknowledged: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    received: int = 0  # distinct numbers
    lost: list[int] = field(default_factory=list)  # acknowledged, never received
    duplicates: int = 0  # extra deliveries
    out_of_order: int = 0
    failed_but_received: int = 0
    acknowledged_before_kill: int = 0  # the highest acknowledged number when the kill happened
    unreceived_at_kill: int = 0  # sent but not yet received when the kill happened
    failover_seconds: float = 0.0  # kill until the cluster names a new primary for the queue
    healthy_seconds: float = 0.0  # kill until the restarted node is a replica in sync
    longest_send: float = 0.0
    left_queued: int = 0
    ok: bool = True
    error: str = ""
    errors: list[str] = field(default_factory=list)
    trace: str = ""


def make_layer(cluster: LocalCluster, wait: int) -> Any:
    from channels_valkey.core import ValkeyChannelLayer

    return ValkeyChannelLayer(
        hosts=[{"cluster": True, "startup_nodes": cluster.startup_nodes}],
        prefix=PREFIX,
        capacity=CAPACITY,
        wait_for_replicas=wait,
        replica_timeout=1.0,
    )


def queue_key(channel: str) -> str:
    return f"{PREFIX}{{{channel}}}"


async def failover_run(
    cluster: LocalCluster,
    proxy: Proxy | None,
    scenario: Scenario,
    wait: int,
    index: int,
    options: argparse.Namespace,
) -> FailoverRun:
    channel = f"failover.{scenario.key}.w{wait}.run{index}"
    run = FailoverRun(wait, index, channel)
    layer = make_layer(cluster, wait)
    traffic = Traffic(layer, channel, scenario.delay_ms / 1000)
    receiver = asyncio.ensure_future(traffic.receive())
    sender = asyncio.ensure_future(traffic.send())
    try:
        await asyncio.sleep(options.before)
        victim: Node = await asyncio.to_thread(cluster.node_for, queue_key(channel))
        run.victim = victim.name
        run.acknowledged_before_kill = max(traffic.acknowledged, default=-1)
        run.unreceived_at_kill = traffic.sent - len(traffic.received)
        killed_at = now()
        victim.kill()  # SIGKILL, no WAIT first
        if proxy is not None:
            proxy.crash(victim)  # and what was on its way to the replica is gone

        def taken_over() -> bool:
            try:
                return cluster.node_for(queue_key(channel)) is not victim
            except LookupError:  # no node claims the slot for a moment
                return False

        await asyncio.to_thread(wait_until, taken_over, 30)
        run.failover_seconds = now() - killed_at
        await asyncio.sleep(options.down)
        victim.spawn()  # from this (the main) thread: see Node.spawn
        if proxy is not None:
            proxy.revive(victim)
        await asyncio.to_thread(victim.wait_ready)
        await asyncio.to_thread(cluster.wait_healthy, 60)
        run.healthy_seconds = now() - killed_at
        await asyncio.sleep(options.after)
        if not await traffic.finish(sender):
            raise RuntimeError("the last message could not be sent within 30 s")
        await asyncio.wait_for(asyncio.shield(receiver), 60)
    except Exception as error:
        run.ok = False
        run.error = f"{type(error).__name__}: {error}"
    finally:
        await traffic.stop(sender, receiver)
        primary = await asyncio.to_thread(cluster.node_for, queue_key(channel))
        left = primary.command("ZCARD", queue_key(channel))
        run.left_queued = left if isinstance(left, int) else 0
        await layer.close_pools()
    run.sent = traffic.sent
    run.acknowledged = len(traffic.acknowledged)
    run.failed = dict(Counter(traffic.failed.values()))
    run.received = len(traffic.received)
    run.lost = sorted(traffic.lost())
    run.duplicates = traffic.duplicates()
    run.out_of_order = traffic.out_of_order
    run.failed_but_received = len(set(traffic.failed) & set(traffic.received))
    run.longest_send = max((seconds for _, seconds in traffic.latencies), default=0.0)
    run.errors = traffic.errors[:20]
    run.trace = traffic.trace
    return run


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    wait_for(predicate, timeout, "the failover")


@dataclass
class SteadyRun:
    wait_for_replicas: int
    index: int
    sends: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    p50: float | None = None
    p99: float | None = None
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    ok: bool = True
    error: str = ""


async def steady_run(
    cluster: LocalCluster, scenario: Scenario, wait: int, index: int, options: argparse.Namespace
) -> SteadyRun:
    channel = f"steady.{scenario.key}.w{wait}.run{index}"
    run = SteadyRun(wait, index)
    layer = make_layer(cluster, wait)
    traffic = Traffic(layer, channel)
    receiver = asyncio.ensure_future(traffic.receive())
    # A short warm-up (connections, scripts), not counted.
    warm = Traffic(layer, channel + ".warm")
    warm_receiver = asyncio.ensure_future(warm.receive())
    warm_sender = asyncio.ensure_future(warm.send())
    await asyncio.sleep(0.3)
    await warm.finish(warm_sender)
    await warm_receiver
    sender = asyncio.ensure_future(traffic.send())
    started = now()
    try:
        await asyncio.sleep(options.seconds)
        traffic.stop_sending.set()
        await asyncio.wait_for(asyncio.shield(sender), 30)
        run.seconds = now() - started
        await traffic.finish(sender)
        await asyncio.wait_for(asyncio.shield(receiver), 30)
    except Exception as error:
        run.ok = False
        run.error = f"{type(error).__name__}: {error}"
    finally:
        await traffic.stop(sender, receiver)
        await layer.close_pools()
    latencies = [seconds for _, seconds in traffic.latencies]
    run.sends = len(traffic.acknowledged)
    run.rate = run.sends / run.seconds if run.seconds else 0.0
    run.p50 = quantile(latencies, 0.5)
    run.p99 = quantile(latencies, 0.99)
    run.failed = len(traffic.failed)
    run.lost = len(traffic.lost())
    run.duplicates = traffic.duplicates()
    return run


async def measure(
    cluster: LocalCluster, proxy: Proxy | None, scenario: Scenario, options: argparse.Namespace
) -> dict[str, Any]:
    failover: list[FailoverRun] = []
    steady: list[SteadyRun] = []
    for index in range(options.runs):
        for wait in options.waits:
            run = await failover_run(cluster, proxy, scenario, wait, index, options)
            failover.append(run)
            failed = ", ".join(f"{k} {v}" for k, v in run.failed.items()) or "none"
            log(
                f"[{scenario.key} failover w={wait} {index + 1}/{options.runs}] killed "
                f"{run.victim} with {run.unreceived_at_kill} unreceived: acknowledged "
                f"{run.acknowledged}, raised {failed}, lost {len(run.lost)}, duplicates "
                f"{run.duplicates}, failover {run.failover_seconds:.2f} s"
                + ("" if run.ok else f" FAILED: {run.error}")
            )
            for error in run.errors[:3]:
                log(f"    send raised {error[:300]}")
    for index in range(options.runs if scenario.steady else 0):
        for wait in options.waits if index % 2 == 0 else options.waits[::-1]:
            result = await steady_run(cluster, scenario, wait, index, options)
            steady.append(result)
            log(
                f"[{scenario.key} steady w={wait} {index + 1}/{options.runs}] "
                f"{result.rate:,.0f} sends/s, p50 {fmt_ms(result.p50)} ms, "
                f"p99 {fmt_ms(result.p99)} ms" + ("" if result.ok else f" FAILED: {result.error}")
            )
    return {
        **asdict(scenario),
        "failover": [asdict(run) for run in failover],
        "steady": [asdict(run) for run in steady],
    }


def run_scenario(scenario: Scenario, options: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """A new cluster (behind a lag proxy if the scenario wants one), measured; and the
    server's version."""
    lagging = scenario.lag_ms > 0
    cluster = LocalCluster(3, replicas=1, name=f"failover-{scenario.key}", announce=lagging)
    proxy = Proxy(cluster, scenario.lag_ms) if lagging else None
    try:
        cluster.start()
        version = cluster.nodes[0].info("server").get("valkey_version", "?")
        return asyncio.run(measure(cluster, proxy, scenario, options)), version
    finally:
        cluster.stop()
        if proxy is not None:
            proxy.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="failover runs per setting (5)")
    parser.add_argument(
        "--scenarios", default="loopback,backlog,lag", help="default: loopback,backlog,lag"
    )
    parser.add_argument("--before", type=float, default=1.0, help="traffic before the kill (1)")
    parser.add_argument(
        "--down", type=float, default=3.0, help="seconds the killed node stays down (3)"
    )
    parser.add_argument("--after", type=float, default=1.0, help="traffic after recovery (1)")
    parser.add_argument(
        "--delay-ms", type=float, default=2.0, help="the receiver's time per message (2)"
    )
    parser.add_argument(
        "--lag-ms", type=float, default=20.0, help="replication held by the proxy (20)"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="each steady-state measurement (2)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--measured", default="as installed", help="what build is measured")
    return parser


def main() -> int:
    options = build_parser().parse_args()
    options.waits = [0, 1]
    # A terminated run still stops its nodes and removes their directories (``finally``).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = scenarios(options)
    started = datetime.now(timezone.utc)
    load_before = load_average()
    measured = []
    version = "?"
    for scenario in chosen:
        log(f"scenario {scenario.key}: {scenario.title}")
        try:
            found, version = run_scenario(scenario, options)
        except Exception as error:  # reported; the other scenarios still run
            log(f"scenario {scenario.key} failed: {type(error).__name__}: {error}")
            found = {
                **asdict(scenario),
                "error": f"{type(error).__name__}: {error}",
                "failover": [],
                "steady": [],
            }
        measured.append(found)
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cores_and_platform(),
        "server_version": version,
        "package": importlib.metadata.version("channels-valkey"),
        "measured": options.measured,
        "load_before": load_before,
        "options": {
            "runs": options.runs,
            "before": options.before,
            "down": options.down,
            "after": options.after,
            "delay_ms": options.delay_ms,
            "lag_ms": options.lag_ms,
            "seconds": options.seconds,
            "waits": options.waits,
            "window": WINDOW,
        },
        "scenarios": measured,
    }
    report = markdown(result)
    print(report)
    if not options.no_save:
        stamp = stamp_of(started, "failover-")
        save_results(options.results, stamp, result, report)
        log(f"wrote {options.results / stamp}.json and .md")
    bad = [
        r for scenario in measured for r in scenario["failover"] + scenario["steady"] if not r["ok"]
    ]
    return 1 if bad or any(scenario.get("error") for scenario in measured) else 0


if __name__ == "__main__":
    sys.exit(main())
