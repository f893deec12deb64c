"""One long-lived event loop per process, in a thread of its own, that runs coroutines for
synchronous callers.

Why: a layer keeps its connections per event loop (``_common.per_loop``), so ``async_to_sync``,
which makes a loop per call, opens and closes a connection per call. Calls run here share one loop,
so they share that loop's warm connections, and any number of threads may call at once
(``asyncio.run_coroutine_threadsafe``).

Owners and endings:

- :data:`background` (the process's :class:`BackgroundLoop`) owns at most one :class:`_Runner`
  at a time, started on first use.
- The runner owns its thread and the loop, made and finished by ``asyncio.run`` in that
  thread. Stopping the runner lets the calls in flight finish, then returns from the loop's
  main coroutine, so ``asyncio.run`` cancels every task left on the loop. Among them are the
  layers' per-loop keepers, whose cancellation closes their connections on this loop
  (``LoopOwned``): the servers see each connection close, and nothing is left for the garbage
  collector to warn about.
- The runner is stopped at interpreter exit (``atexit``: daemon threads still run then), and
  before ``os.fork()``, so that a child (a Celery prefork worker, a gunicorn worker) inherits
  no thread and no socket of the parent, and the fork happens with one thread fewer. Either
  process starts a new runner on its next call. The only fork that cannot stop the runner
  first is one made from the runner's own thread; the child then keeps the parent's runner
  object untouched (its sockets and selector are shared with the parent, which still uses
  them) and starts its own.
- A call made after the runner was stopped at exit (from another ``atexit`` handler, say)
  runs on a loop of its own in the caller's thread, with ``asyncio.run``: slower, but nothing
  is left open.

The layers' sending methods use it too, when they are awaited on a short-lived loop
(:func:`warm`): ``async_to_sync`` from a view, a signal or a Celery task makes a loop per call,
which would open, use once and close a connection per call.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class _LoopThread(threading.Thread):
    """The thread of a background loop."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: What layers keep on this loop (see ``_common.per_loop``), alive until the loop ends.
        self.held: set[object] = set()


class _Runner:
    """A thread running one event loop until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        #: The calls in flight, which a stop lets finish.
        self._calls: set[asyncio.Task[Any]] = set()
        self.thread = _LoopThread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._started.wait()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._started.set()  # also when asyncio.run() failed before _serve() ran

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        await self._stopping.wait()
        while self._calls:
            await asyncio.wait(set(self._calls))
        # Returning lets asyncio.run() cancel the tasks left, the layers' keepers among them,
        # which closes their connections on this loop before it closes.

    @property
    def running(self) -> bool:
        return self._loop is not None and self.thread.is_alive()

    def submit(self, make: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            raise RuntimeError("the background event loop did not start")
        return asyncio.run_coroutine_threadsafe(self._call(make), self._loop)

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        # A call submitted before stop() is registered before _serve() looks at _calls: both
        # reach the loop through call_soon_threadsafe, in that order (BackgroundLoop holds
        # its lock for each), and this first step is scheduled ahead of _serve()'s wake-up.
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        try:
            return await make()
        finally:
            if task is not None:
                self._calls.discard(task)

    def stop(self) -> None:
        """Let the calls in flight finish, close what the loop holds, end the thread.

        Calls in flight are bounded by the layer's own deadlines, so this returns."""
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stopping.set)
        if threading.current_thread() is not self.thread:
            self.thread.join()


class BackgroundLoop:
    """Runs coroutines for synchronous code on one long-lived loop per process."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._runner: _Runner | None = None
        self._exited = False
        #: Runners of the parent process that a fork could not stop (forked from their own
        #: thread); kept, never used nor closed, so that nothing of the parent is touched.
        self._inherited: list[_Runner] = []
        atexit.register(self._at_exit)
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )

    def run(self, make: Callable[[], Awaitable[T]], caller: str) -> T:
        """Await ``make()`` on the background loop and return its result, or raise what it
        raised, unchanged. ``caller`` names the function for the error raised when this is
        called from a running event loop, which it would block."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"{caller}() cannot be called from a running event loop: it would block the "
                "loop until the call is done. In async code, await the layer's method instead "
                "(await get_channel_layer().group_send(...))."
            )
        future = self._submit(make)
        if future is None:
            return asyncio.run(_awaited(make))
        try:
            return future.result()
        except BaseException:
            future.cancel()  # the caller was interrupted (KeyboardInterrupt, say)
            raise

    async def run_from_loop(self, make: Callable[[], Awaitable[T]]) -> T:
        """Await ``make()`` on the background loop from another event loop. Cancelling the
        caller cancels the call there."""
        future = self._submit(make)
        if future is None:  # stopped for good (exit): run here
            return await make()
        return await asyncio.wrap_future(future)

    async def close_there(self, close: Callable[[], Awaitable[None]]) -> None:
        """Await ``close()`` on the background loop if it runs (a layer's ``close()`` closes
        what the layer holds there too); nothing when it does not, or from that loop."""
        with self._lock:
            runner = self._runner
            if runner is None or not runner.running or self.runs_here():
                return
            future = runner.submit(close)
        await asyncio.wrap_future(future)

    @staticmethod
    def hold(owned: object) -> None:
        """Keep ``owned``, something a layer keeps on the background loop (called from that
        loop), until the loop ends or :meth:`let_go`: its tasks then end with the loop, even
        when the layer was dropped without ``close()``."""
        thread = threading.current_thread()
        if isinstance(thread, _LoopThread):
            thread.held.add(owned)

    @staticmethod
    def let_go(owned: object) -> None:
        thread = threading.current_thread()
        if isinstance(thread, _LoopThread):
            thread.held.discard(owned)

    @staticmethod
    def runs_here() -> bool:
        """Whether the running code is on a background loop's thread: the current one, or
        one being stopped, whose calls in flight finish on it."""
        return isinstance(threading.current_thread(), _LoopThread)

    def stop(self) -> None:
        """Stop the loop, closing its connections; the next call starts a new one."""
        with self._lock:
            self._stop_locked()

    def _submit(self, make: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T] | None:
        """Hand ``make`` to the runner, started if need be; ``None`` once stopped for good
        (exit). Under the lock, so that a stop, which takes it too, comes after the call in
        the loop's queue and lets it finish (see :meth:`_Runner._call`)."""
        with self._lock:
            if self._exited:
                return None
            if self._runner is None or not self._runner.running:
                if self._runner is not None:
                    self._stop_locked()
                try:
                    self._runner = _Runner(self._name)
                except RuntimeError:  # no new thread while the interpreter shuts down
                    return None
                if not self._runner.running:
                    self._runner = None
                    raise RuntimeError("the background event loop did not start")
            return self._runner.submit(make)

    def _stop_locked(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()

    def _at_exit(self) -> None:
        with self._lock:
            self._exited = True
            self._stop_locked()

    def _before_fork(self) -> None:
        # Held across the fork, so that no other thread starts a runner meanwhile.
        self._lock.acquire()
        runner = self._runner
        if runner is not None and threading.current_thread() is not runner.thread:
            self._stop_locked()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        if self._runner is not None:  # forked from the runner's own thread
            self._inherited.append(self._runner)
            self._runner = None
        self._lock = threading.Lock()


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


#: The process's background loop, shared by every layer.
background = BackgroundLoop("channels_valkey background loop")


class _Layer(Protocol):
    def _holds_running_loop(self) -> bool: ...


L = TypeVar("L", bound=_Layer)


def warm(
    method: Callable[Concatenate[L, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[L, P], Coroutine[Any, Any, T]]:
    """For a layer method that only writes to the servers (sends, group sends): awaited on a
    loop that is probably short-lived, it runs on the background loop instead, whose
    connections stay open between calls.

    Probably short-lived: a loop running in a thread other than the main one, on which the
    layer holds nothing yet (no ``receive()``, no subscription). ``async_to_sync`` called
    where no loop runs (a WSGI view, a Celery task, a management command) makes exactly such
    a loop, in a thread of its own, for each call. A server's loop runs in the main thread
    (uvicorn, Daphne, gunicorn's workers), so its sends stay where they are; so do a script's
    ``asyncio.run()``, which makes one loop for its whole run, and ``async_to_sync`` under a
    running server, which hands the call to the server's loop. A long-lived loop in a thread
    of its own that only sends also takes the hand-over: correct, one thread hop slower.
    """

    @functools.wraps(method)
    async def handing_over(layer: L, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if (
            threading.current_thread() is threading.main_thread()
            or layer._holds_running_loop()
            or background.runs_here()
        ):
            return await method(layer, *args, **kwargs)
        return await background.run_from_loop(lambda: method(layer, *args, **kwargs))

    return handing_over
