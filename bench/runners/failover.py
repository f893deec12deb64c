"""What ``wait_for_replicas`` saves across a primary's crash, and what it costs.

    ./bench/run --failover [--runs 5] [--scenarios loopback,backlog,lag]
    python bench/cluster_failover.py [...]   # any Python with this package installed

For each scenario, starts a private Valkey Cluster of 3 primaries with a replica each
(``shared/localcluster.py``), then, alternating ``wait_for_replicas=0`` and ``=1``
(``replica_timeout`` 1 s), ``--runs`` times each:

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
  (``shared/lagproxy.py``, the nodes announce its ports), which drops what it still holds when the
  primary is killed: a replica that lags behind, as over a network, and a crash that loses
  what was on its way.

Then the steady-state cost, with no failover (``loopback`` and ``lag``, the receiver as fast as
it can): sends/s and send latency p50/p99, ``--runs`` times for each setting, interleaved.

Prints the tables (``reports/failover.py``) and writes
``bench/results/failover-<UTC time>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import signal
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from measuring.failover import (
    WINDOW,
    FailoverRun,
    Proxy,
    Scenario,
    SteadyRun,
    failover_run,
    steady_run,
)
from reports.failover import fmt_ms, markdown
from shared.localcluster import LocalCluster
from shared.machine import cores_and_platform, load_average
from shared.procs import log
from shared.resultfiles import RESULTS, save_results, stamp_of


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
