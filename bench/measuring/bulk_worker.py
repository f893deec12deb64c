"""One ``--bulk`` measurement, in the measured layer's venv: a warm-up, then the timed epoch.

``runners/bulk.py`` starts ``python measuring/bulk_worker.py PARAMS`` with the Python of the layer's
venv. The worker sets up (a group, for ``group``), runs a warm-up, prints ``{"warm": true}``
and waits for a line on its standard input: the measuring process reads what the warm-up left
queued and resets the server's statistics in between, so both cover the epoch only. Then it
runs the epoch and prints its report, one JSON line. Round trips are counted inside the
client libraries, as in the main benchmark (``measuring/roundtrips.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

# Run as a script: the benchmark's packages are imported from bench/, the folder above.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from catalogue import BULK_GROUP_MEMBERS

from measuring.channel_api import make_layer
from measuring.flow import TEXT, WINDOW
from measuring.roundtrips import ROUND_TRIPS, count_round_trips

CHANNEL = "bench.bulk"
GROUP = "bench-bulk"
#: Big enough that no send of a measurement meets a full channel.
HUGE_CAPACITY = 10**9


async def send_calls(layer: Any, workload: str, mode: str, batch: int, seconds: float) -> int:
    """Send batches for ``seconds``; returns how many messages were sent."""
    messages = [{"type": "bench.bulk", "n": n, "text": TEXT} for n in range(batch)]
    if workload == "send":
        single, target = layer.send, CHANNEL
        multiple = getattr(layer, "send_multiple", None)
    else:
        single, target = layer.group_send, GROUP
        multiple = getattr(layer, "group_send_multiple", None)
    sent = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if mode == "bulk":
            assert multiple is not None, "bulk mode needs send_multiple/group_send_multiple"
            await multiple(target, messages)
        elif mode == "gather":
            await asyncio.gather(*(single(target, message) for message in messages))
        else:
            for message in messages:
                await single(target, message)
        sent += batch
    return sent


async def size_epoch(layer: Any, size: int, seconds: float) -> int:
    """A sender and a receiver task on one normal channel, at most WINDOW in flight."""
    body = "x" * size
    room = asyncio.Semaphore(WINDOW)
    channel = f"{CHANNEL}.size"

    async def sender() -> int:
        n = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await room.acquire()
            await layer.send(channel, {"type": "bench.size", "n": n, "body": body})
            n += 1
        # Marked last, so the receiver stops without waiting on an empty channel.
        await layer.send(channel, {"type": "bench.size", "n": n, "body": "", "last": True})
        return n

    async def receiver() -> int:
        n = 0
        while True:
            message = await layer.receive(channel)
            if message["n"] != n:
                raise RuntimeError(f"expected message {n}, got {message['n']}")
            if message.get("last"):
                return n
            if len(message["body"]) != size:
                raise RuntimeError(f"message {n} arrived with {len(message['body'])} bytes")
            n += 1
            room.release()

    sending = asyncio.create_task(sender())
    received = await receiver()
    if await sending != received:
        raise RuntimeError(f"{await sending} sent, {received} received")
    return received


async def epoch(layer: Any, params: dict[str, Any], seconds: float) -> int:
    """One epoch of the measurement ``params`` describe; the messages sent."""
    if params["workload"] == "size":
        return await size_epoch(layer, params["size"], seconds)
    return await send_calls(layer, params["workload"], params["mode"], params["batch"], seconds)


async def worker(params: dict[str, Any]) -> dict[str, Any]:
    count_round_trips()
    options = {"capacity": HUGE_CAPACITY} if params["kind"] == "core" else {}
    layer = make_layer(params["path"], params["url"], **options)
    if params["workload"] == "group" and params["kind"] == "core":
        for n in range(BULK_GROUP_MEMBERS):
            await layer.group_add(GROUP, f"bench.member.{n}")
    await epoch(layer, params, params["warmup"])
    # What the warm-up left queued is counted apart, so the check covers only the epoch.
    print(json.dumps({"warm": True}), flush=True)
    sys.stdin.readline()
    ROUND_TRIPS.clear()
    started = time.perf_counter()
    sent = await epoch(layer, params, params["seconds"])
    elapsed = time.perf_counter() - started
    round_trips = sum(ROUND_TRIPS.values())
    close = getattr(layer, "close_pools", None) or layer.flush
    await close()
    return {"ok": True, "sent": sent, "seconds": elapsed, "round_trips": round_trips}


def main() -> int:
    params = json.loads(sys.argv[1])
    try:
        report = asyncio.run(worker(params))
    except Exception as error:  # reported to the measuring process, which records it
        report = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
