"""Helper processes of multi-process workloads, and how they talk to the measuring process.

A workload that spans processes starts helpers running ``workload.py helper ROLE PARAMS``
with the same Python, and talks to them over their stdin/stdout, one JSON object per line:
commands in, events out (``ready``, ``ack`` for flow control, ``done``, ``report``). Nothing
waits on a sleep: every step waits for the event it needs, or for a helper's failure.
Runs in the measured layer's venv.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from measuring.flow import BenchFailure
from measuring.roundtrips import ROUND_TRIPS

#: The script a helper process runs (its ``helper`` mode).
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload.py")


class Helper:
    """A helper process (this script, ``helper`` mode) and the lines it writes."""

    def __init__(self, name: str, on_ack: Callable[[int, str], None] | None = None) -> None:
        self.name = name
        self._on_ack = on_ack
        self._process: asyncio.subprocess.Process | None = None
        self._events: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Reported through guard() or expect() when it matters; never "never retrieved".
        self.failure.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def start(self, role: str, params: dict[str, Any]) -> dict[str, Any]:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            "helper",
            role,
            json.dumps(params),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        self._reader = asyncio.ensure_future(self._read())
        return await self.expect("ready")

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                code = await self._process.wait()
                if not self._stopping or code:
                    self._fail(f"helper {self.name} exited (code {code})")
                return
            event = json.loads(line)
            kind = event["event"]
            if kind == "ack" and self._on_ack is not None:
                self._on_ack(event["n"], self.name)
            elif kind == "error":
                self._fail(f"helper {self.name}: {event['message']}")
                return
            else:
                self._events.setdefault(kind, asyncio.Queue()).put_nowait(event)

    def _fail(self, reason: str) -> None:
        if not self.failure.done():
            self.failure.set_exception(BenchFailure(reason))

    async def expect(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        queue = self._events.setdefault(kind, asyncio.Queue())
        got = asyncio.ensure_future(queue.get())
        waiting: set[asyncio.Future[Any]] = {got, self.failure}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            got.cancel()
        if self.failure in done:
            self.failure.result()
        if got not in done:
            raise BenchFailure(f"helper {self.name}: no {kind!r} within {timeout:.0f} s")
        return got.result()

    def tell(self, command: str, **fields: Any) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"cmd": command, **fields}).encode() + b"\n")

    async def stop(self) -> None:
        if self._process is None:
            return
        self._stopping = True
        if self._process.returncode is None:
            with contextlib.suppress(Exception):
                self.tell("exit")
            try:
                await asyncio.wait_for(self._process.wait(), 20)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if not self.failure.done():
            self.failure.cancel()


class Helpers:
    """Several helper processes handled together."""

    def __init__(self, helpers: list[Helper]) -> None:
        self.helpers = helpers

    async def start(self, role: str, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(helper.start(role, p) for helper, p in zip(self.helpers, params, strict=True))
        )

    async def expect(self, kind: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        return await asyncio.gather(*(helper.expect(kind, timeout) for helper in self.helpers))

    def tell(self, command: str, **fields: Any) -> None:
        for helper in self.helpers:
            helper.tell(command, **fields)

    async def reset(self) -> None:
        self.tell("reset")
        await self.expect("reset")

    async def round_trips(self) -> tuple[Counter[str], float]:
        """The helpers' round trips since ``reset``, and their CPU seconds."""
        self.tell("report")
        total: Counter[str] = Counter()
        cpu = 0.0
        for report in await self.expect("report"):
            total.update(report["round_trips"])
            cpu += report["cpu"]
        return total, cpu

    async def guard(self, aw: Awaitable[Any], timeout: float) -> Any:
        """Await ``aw`` unless a helper fails first or ``timeout`` passes."""
        task = asyncio.ensure_future(aw)
        failures = [helper.failure for helper in self.helpers]
        try:
            done, _ = await asyncio.wait(
                {task, *failures}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            task.cancel()
        for failure in failures:
            if failure in done:
                failure.result()
        if task not in done:
            raise BenchFailure(f"no result within {timeout:.0f} s")
        return task.result()

    async def stop(self) -> None:
        await asyncio.gather(*(helper.stop() for helper in self.helpers))


class Coordinator:
    """The helper's link to the process that started it: commands in, events out."""

    def __init__(self) -> None:
        self.exit = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._cpu_since = time.process_time()

    def emit(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self._task = asyncio.ensure_future(self._serve(reader))

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                self.exit.set()
                return
            received = json.loads(line)
            command = received["cmd"]
            if command == "reset":
                ROUND_TRIPS.clear()
                self._cpu_since = time.process_time()
                self.emit("reset")
            elif command == "report":
                cpu = time.process_time() - self._cpu_since
                self.emit("report", round_trips=dict(ROUND_TRIPS), cpu=cpu)
            elif command == "exit":
                self.exit.set()
                return
            else:
                self._commands.put_nowait(received)

    async def command(self, name: str) -> dict[str, Any]:
        """The next command that is not handled here (it must be ``name``)."""
        received = await self._commands.get()
        if received["cmd"] != name:
            raise BenchFailure(f"expected the command {name!r}, got {received['cmd']!r}")
        return received
