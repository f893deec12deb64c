"""Publishing from synchronous code: ``channels_valkey.sync`` against ``async_to_sync``.

Run through ``./bench/run --sync`` (which makes the venvs and starts the server), or directly:
``python3 bench/sync_bench.py --url redis://127.0.0.1:PORT --venvs bench/.venvs``.

Cases, each measured in a process of its own, started with the Python of its layer's venv:

| case | venv | how a call is made |
| --- | --- | --- |
| `ours sync` | `ours` | `channels_valkey.sync.send(...)` / `.group_send(...)` |
| `ours async_to_sync` | `ours` | `async_to_sync(layer.send)(...)` on `ValkeyChannelLayer` |
| `ours await` | `ours` | `await layer.send(...)` on one event loop: the layer's own cost |
| `channels_redis async_to_sync` | `channels-redis` | the same on `RedisChannelLayer` 4.3.0 |

for three calls: `send` to one normal channel; `group_send` to a group of 20 consumers'
channels, as websocket consumers add themselves (``self.channel_name``, process-local channels
made by ``new_channel()``) spread over 2 server processes (2 more layer instances of the same
config, which only make the names); and `group_send-normal` to a group of 20 normal channels,
which costs every layer one write per member. One thread calls in a loop for ``--seconds``,
after a ``--warmup`` that is not counted. The layer comes from ``get_channel_layer()`` with
Django settings made in the process, as a view or a Celery task would get it. Every channel's
capacity is set far above what a measurement writes, so no call meets a full channel; the
server is flushed before each measurement. Reported: calls/s, and new connections per call
(``total_connections_received`` of ``INFO stats`` before and after the measured loop, read on
one connection opened before). Rounds interleave the cases, their order rotated by one each
round; ratios are taken within a round, then the median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from resp import RespClient  # noqa: E402

CASES = {
    "ours sync": ("ours", "channels_valkey.core.ValkeyChannelLayer", "sync"),
    "ours async_to_sync": ("ours", "channels_valkey.core.ValkeyChannelLayer", "async_to_sync"),
    "ours await": ("ours", "channels_valkey.core.ValkeyChannelLayer", "await"),
    "channels_redis async_to_sync": (
        "channels-redis",
        "channels_redis.core.RedisChannelLayer",
        "async_to_sync",
    ),
}
METHODS = ("send", "group_send", "group_send-normal")
#: Server processes whose consumers make up the `group_send` group.
SERVER_PROCESSES = 2
GROUP_SIZE = 20
#: The issue's goals for ``ours sync``: times the rate of these cases.
TARGETS = {"channels_redis async_to_sync": 10.0, "ours async_to_sync": 3.0}


def worker(args: argparse.Namespace) -> None:
    """One measurement; prints one JSON line."""
    from asgiref.sync import async_to_sync
    from django.conf import settings

    settings.configure(
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": args.backend,
                "CONFIG": {"hosts": [args.url], "capacity": 10**9},
            }
        }
    )
    from channels.layers import channel_layers, get_channel_layer

    layer = get_channel_layer()
    message = {"type": "bench.message", "text": "x" * 100}
    if args.method == "group_send":
        servers = [channel_layers.make_backend("default") for _ in range(SERVER_PROCESSES)]
        for i in range(GROUP_SIZE):
            member = async_to_sync(servers[i % SERVER_PROCESSES].new_channel)()
            async_to_sync(layer.group_add)("bench-group", member)
        target = "bench-group"
    elif args.method == "group_send-normal":
        for i in range(GROUP_SIZE):
            async_to_sync(layer.group_add)("bench-group", f"bench.member{i}")
        target = "bench-group"
    else:
        target = "bench.channel"
    method = args.method.partition("-")[0]
    if args.how == "sync":
        from channels_valkey import sync

        call = getattr(sync, method)
    elif args.how == "async_to_sync":
        call = async_to_sync(getattr(layer, method))

    admin = RespClient.from_url(args.url)
    if args.how == "await":
        before, calls, elapsed = asyncio.run(awaited(args, layer, method, target, message, admin))
    else:
        deadline = time.perf_counter() + args.warmup
        while time.perf_counter() < deadline:
            call(target, message)
        before = int(admin.info("stats")["total_connections_received"])
        calls = 0
        start = time.perf_counter()
        deadline = start + args.seconds
        while time.perf_counter() < deadline:
            call(target, message)
            calls += 1
        elapsed = time.perf_counter() - start
    after = int(admin.info("stats")["total_connections_received"])
    admin.close()
    print(
        json.dumps(
            {
                "calls": calls,
                "seconds": elapsed,
                "calls_per_s": calls / elapsed,
                "new_connections_per_call": (after - before) / calls,
            }
        ),
        flush=True,
    )


async def awaited(
    args: argparse.Namespace,
    layer: Any,
    method: str,
    target: str,
    message: dict[str, Any],
    admin: RespClient,
) -> tuple[int, int, float]:
    """The same loop in async code, awaiting the layer on one event loop: the layer's own
    cost, without the hand-over between threads that a synchronous caller pays."""
    call = getattr(layer, method)
    deadline = time.perf_counter() + args.warmup
    while time.perf_counter() < deadline:
        await call(target, message)
    before = int(admin.info("stats")["total_connections_received"])
    calls = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    while time.perf_counter() < deadline:
        await call(target, message)
        calls += 1
    elapsed = time.perf_counter() - start
    await layer.close_pools()
    return before, calls, elapsed


def measure(args: argparse.Namespace, case: str, method: str) -> dict[str, float]:
    venv, backend, how = CASES[case]
    python = Path(args.venvs) / venv / "bin" / "python"
    with RespClient.from_url(args.url) as admin:
        admin.command("FLUSHALL")
    run = subprocess.run(
        [
            str(python),
            str(Path(__file__).resolve()),
            "--worker",
            "--url",
            args.url,
            "--backend",
            backend,
            "--how",
            how,
            "--method",
            method,
            "--seconds",
            str(args.seconds),
            "--warmup",
            str(args.warmup),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode != 0 or run.stderr.strip():
        raise SystemExit(f"{case} {method} failed:\n{run.stdout}{run.stderr}")
    result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def render(results: dict[str, object]) -> str:
    rounds: list[dict[str, dict[str, dict[str, float]]]] = results["rounds"]  # type: ignore[assignment]
    lines = [
        "# Publishing from synchronous code",
        "",
        f"Measured: {results['measured']}; {len(rounds)} round(s) of "
        f"{results['seconds']} s per measurement; load average at start "
        f"{results['loadavg']}.",
        "",
        "| method | case | calls/s (median) | lowest-highest | new connections/call |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        for case in CASES:
            rates = [r[method][case]["calls_per_s"] for r in rounds]
            conns = [r[method][case]["new_connections_per_call"] for r in rounds]
            lines.append(
                f"| `{method}` | {case} | {statistics.median(rates):,.0f} | "
                f"{min(rates):,.0f}-{max(rates):,.0f} | {statistics.median(conns):.3f} |"
            )
    lines += [
        "",
        "Targets: `ours sync` divided by the other case, within each round; median and "
        "lowest-highest over rounds.",
        "",
        "| method | against | goal | ratio (median) | lowest-highest | met in rounds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        for other, goal in TARGETS.items():
            ratios = [
                r[method]["ours sync"]["calls_per_s"] / r[method][other]["calls_per_s"]
                for r in rounds
            ]
            met = sum(ratio >= goal for ratio in ratios)
            lines.append(
                f"| `{method}` | {other} | {goal:g}x | {statistics.median(ratios):.1f}x | "
                f"{min(ratios):.1f}-{max(ratios):.1f}x | {met}/{len(ratios)} |"
            )
    lines += [
        "",
        "What the hand-over between threads costs: `ours sync` divided by `ours await`.",
        "",
        "| method | ratio (median) | lowest-highest |",
        "| --- | --- | --- |",
    ]
    for method in METHODS:
        ratios = [
            r[method]["ours sync"]["calls_per_s"] / r[method]["ours await"]["calls_per_s"]
            for r in rounds
        ]
        lines.append(
            f"| `{method}` | {statistics.median(ratios):.2f} | "
            f"{min(ratios):.2f}-{max(ratios):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--venvs", default=str(HERE / ".venvs"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--measured", default="working tree")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--how", choices=["sync", "async_to_sync", "await"], help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results: dict[str, object] = {
        "measured": args.measured,
        "seconds": args.seconds,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": [],
    }
    rounds: list[dict[str, dict[str, dict[str, float]]]] = results["rounds"]  # type: ignore[assignment]
    cases = list(CASES)
    for index in range(args.rounds):
        order = cases[index % len(cases) :] + cases[: index % len(cases)]
        this: dict[str, dict[str, dict[str, float]]] = {method: {} for method in METHODS}
        for method in METHODS:
            for case in order:
                this[method][case] = measure(args, case, method)
                print(
                    f"round {index + 1} {method:17} {case:30} "
                    f"{this[method][case]['calls_per_s']:10,.0f} calls/s",
                    file=sys.stderr,
                    flush=True,
                )
        rounds.append(this)
    report = render(results)
    print(report)
    if not args.no_save:
        out = HERE / "results"
        (out / f"sync-{stamp}.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / f"sync-{stamp}.md").write_text(report)


if __name__ == "__main__":
    main()
