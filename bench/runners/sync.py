"""Publishing from synchronous code: ``channels_valkey.sync`` against ``async_to_sync``.

Run through ``./bench/run --sync`` (which makes the venvs and starts the server), or directly:
``python3 bench/sync_bench.py --url redis://127.0.0.1:PORT --venvs bench/.venvs``. Each
measurement is a ``measuring/sync_worker.py`` process; ``reports/sync.py`` writes the report.

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
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from catalogue import SYNC_CASES, SYNC_METHODS
from reports.sync import render
from shared.procs import log, python_of
from shared.resp import RespClient
from shared.resultfiles import RESULTS, save_results, stamp_of
from shared.stats import rotated

BENCH = Path(__file__).resolve().parents[1]

WORKER = str(BENCH / "measuring" / "sync_worker.py")


def measure(args: argparse.Namespace, case: str, method: str) -> dict[str, float]:
    """One measurement in a process of its own, on a flushed server; its report."""
    venv, backend, how = SYNC_CASES[case]
    python = python_of(Path(args.venvs), venv)
    with RespClient.from_url(args.url) as admin:
        admin.command("FLUSHALL")
    run = subprocess.run(
        [
            str(python),
            WORKER,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--venvs", default=str(BENCH / ".venvs"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--measured", default="working tree")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    stamp = stamp_of(datetime.now(timezone.utc), "sync-")
    results: dict[str, object] = {
        "measured": args.measured,
        "seconds": args.seconds,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": [],
    }
    rounds: list[dict[str, dict[str, dict[str, float]]]] = results["rounds"]  # type: ignore[assignment]
    for index in range(args.rounds):
        order = rotated(list(SYNC_CASES), index)
        this: dict[str, dict[str, dict[str, float]]] = {method: {} for method in SYNC_METHODS}
        for method in SYNC_METHODS:
            for case in order:
                this[method][case] = measure(args, case, method)
                log(
                    f"round {index + 1} {method:17} {case:30} "
                    f"{this[method][case]['calls_per_s']:10,.0f} calls/s"
                )
        rounds.append(this)
    report = render(results)
    print(report)
    if not args.no_save:
        save_results(RESULTS, stamp, results, report)
