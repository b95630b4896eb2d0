"""Where the relay runs: on the event loop (SQLite), or on a thread of its own
(PostgreSQL), so that a database that makes it wait never stops the event loop.

The websocket transport runs on an asyncio event loop; the relay core is synchronous
and waits on its database. On PostgreSQL every statement is a network round trip and
a transaction may wait for the sequence row another relay holds (up to its
``lock_timeout``): on the loop, each of those waits would stall every connection,
``/healthz`` included. So there the core gets one thread of its own,
:class:`RelayThread`, and the loop only moves bytes::

    event loop (websockets, HTTP)                 relay thread (Relay, sessions, storage)
    ─────────────────────────────                 ───────────────────────────────────────
    await thread.call(session.receive, data) ───▶ runs it, in submission order
                                                  a session queues frames: its wake
    wake.set()  ◀───── thread.notify(wake.set) ── callback is handed to the loop

One thread and one FIFO queue: the relay stays single-threaded (nothing in it takes a
lock), calls run in the order they were submitted, and group commit keeps its meaning:
the settle a push defers with :meth:`RelayThread.defer` runs behind everything
submitted before it, so the pushes read in one turn of the loop share a commit.

What goes back to the loop (results of :meth:`RelayThread.call`, callbacks given to
:meth:`RelayThread.notify`) is handed over in batches: when the queue runs dry, or
every :data:`HAND_OVER_EVERY` calls under load, one ``call_soon_threadsafe`` carries
everything gathered since. A frame costs the loop one wake-up, not one per result.

On SQLite the relay stays on the loop, :class:`RelayOnLoop`: its statements are calls
into a library, and the one wait, the commit's fsync, is paid once per push group.
Handing every frame to a thread and its answer back costs more there than it saves
(measured with the relay benchmarks on a 2-core machine: ~20 % more CPU per change, from
two thread wake-ups per frame and the two threads contending for the GIL).

Both have one interface, :class:`RelayRunner`. The call contract: :meth:`~RelayRunner.call`
and :meth:`~RelayRunner.submit` from the loop; :meth:`~RelayRunner.notify` and
:meth:`~RelayRunner.defer` from code running on the relay's side; :meth:`~RelayRunner.run`
from any thread (it blocks until done); :meth:`~RelayRunner.stop` once, from the loop,
after which nothing may be submitted.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, Protocol, TypeVar

log = logging.getLogger("crdtsync.server")

T = TypeVar("T")

#: under sustained load, hand results to the loop at least every this many calls
HAND_OVER_EVERY = 32

_STOP = object()


class RelayRunner(Protocol):
    """Runs the relay's calls for one event loop (see the module docstring)."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run on the relay's side; its result, or its exception."""
        ...

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)`` run on the relay's side, answering nobody (failures logged)."""
        ...

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run on the relay's side, the calling thread waiting meanwhile."""
        ...

    def defer(self, fn: Callable[[], object]) -> None:
        """``fn`` run after everything submitted so far (a push group's settle)."""
        ...

    def notify(self, callback: Callable[[], object]) -> None:
        """``callback`` run on the loop soon (a session's wake-up)."""
        ...

    async def stop(self) -> None:
        """Finish what was submitted; nothing may be submitted afterwards."""
        ...


class RelayOnLoop:
    """The relay's calls made right away, on the event loop (SQLite)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        _logged(fn, args)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def defer(self, fn: Callable[[], object]) -> None:
        self._loop.call_soon(fn)

    def notify(self, callback: Callable[[], object]) -> None:
        callback()

    async def stop(self) -> None:
        return None


class RelayThread:
    """A thread running submitted calls one at a time, in order, for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "crdtsync-relay") -> None:
        self._loop = loop
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: callbacks for the loop, gathered on the relay thread until the next hand-over
        self._for_loop: list[Callable[[], object]] = []
        self._stopped: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- from the event loop --------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the relay thread; its result or its exception (cancelling
        the wait does not cancel the call: it still runs)."""
        future: asyncio.Future[T] = self._loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 (handed to whoever awaits it)
                self._for_loop.append(partial(_fail, future, exc))
            else:
                self._for_loop.append(partial(_resolve, future, result))

        self._work.put(job)
        return await future

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the relay thread, answering nobody; what it raises is
        logged with its traceback (a fault in the relay, not in the caller)."""
        self._work.put(lambda: _logged(fn, args))

    async def stop(self) -> None:
        """Run what was submitted before, then end the thread."""
        self._stopped = self._loop.create_future()
        self._work.put(_STOP)
        await asyncio.shield(self._stopped)

    # -- from any other thread -------------------------------------------------------------

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the relay thread and return its result, blocking the
        calling thread meanwhile (for tools and tests that inspect a running relay).
        Called on the relay thread itself it just runs."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        result: Future[T] = Future()

        def job() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 (raised again in the caller)
                result.set_exception(exc)

        self._work.put(job)
        return result.result()

    # -- from the relay thread ---------------------------------------------------------------

    def defer(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` after every call submitted so far (a push group's settle)."""
        self.submit(fn)

    def notify(self, callback: Callable[[], object]) -> None:
        """Have the loop run ``callback`` at the next hand-over (a session's wake-up)."""
        self._for_loop.append(callback)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        work, done = self._work, 0
        while True:
            if self._for_loop and (done >= HAND_OVER_EVERY or work.empty()):
                self._hand_over()
                done = 0
            job = work.get()
            if job is _STOP:
                break
            job()
            done += 1
        self._hand_over(last=True)

    def _hand_over(self, last: bool = False) -> None:
        callbacks, self._for_loop = self._for_loop, []
        if last and self._stopped is not None:
            callbacks.append(partial(_resolve, self._stopped, None))
        try:
            self._loop.call_soon_threadsafe(_run_all, callbacks)
        except RuntimeError:  # the loop is closed: nobody is left to answer
            log.warning("relay thread: the event loop closed before %d answers", len(callbacks))


def _run_all(callbacks: list[Callable[[], object]]) -> None:
    for callback in callbacks:
        callback()


def _resolve(future: asyncio.Future[T], result: T) -> None:
    if not future.cancelled():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(exc)


def _logged(fn: Callable[..., object], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except BaseException:  # logged: the thread must go on serving
        log.exception("relay thread: %r failed", fn)
