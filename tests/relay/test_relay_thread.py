"""The relay's own thread (used on PostgreSQL): calls run one at a time, in the order
they were made, off the event loop; failures reach whoever waits, or the log; stopping
finishes what was submitted."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from crdtsync_server.relay_thread import RelayThread


async def test_calls_run_in_submission_order_on_one_thread_that_is_not_the_loops() -> None:
    thread = RelayThread(asyncio.get_running_loop())
    ran: list[tuple[int, str]] = []

    def note(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * i

    results = await asyncio.gather(*(thread.call(note, i) for i in range(50)))
    await thread.stop()
    assert results == [i * i for i in range(50)]
    assert [i for i, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {"crdtsync-relay"} != {threading.current_thread().name}


async def test_a_call_that_raises_fails_its_caller_and_the_thread_goes_on() -> None:
    thread = RelayThread(asyncio.get_running_loop())

    def broken() -> None:
        raise ValueError("the database said no")

    with pytest.raises(ValueError, match="the database said no"):
        await thread.call(broken)
    assert await thread.call(len, "still here") == 10
    await thread.stop()


async def test_a_submitted_call_that_raises_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    thread = RelayThread(asyncio.get_running_loop())

    def broken() -> None:
        raise RuntimeError("lost connection")

    with caplog.at_level(logging.ERROR, logger="crdtsync.server"):
        thread.submit(broken)
        assert await thread.call(len, "next") == 4
    await thread.stop()
    [record] = caplog.records
    assert record.exc_info is not None and "lost connection" in str(record.exc_info[1])


async def test_deferred_work_runs_after_what_was_submitted_before_it() -> None:
    """A push group's settle runs behind the pushes queued before it (group commit)."""
    thread = RelayThread(asyncio.get_running_loop())
    ran: list[str] = []
    thread.submit(lambda: thread.defer(lambda: ran.append("settle")))
    for name in ("push 1", "push 2"):
        thread.submit(ran.append, name)
    await thread.call(lambda: None)
    await thread.stop()
    assert ran == ["push 1", "push 2", "settle"]


async def test_wake_ups_reach_the_loop_and_stop_finishes_submitted_work() -> None:
    thread = RelayThread(asyncio.get_running_loop())
    woken = asyncio.Event()
    ran: list[int] = []
    thread.submit(thread.notify, woken.set)
    await asyncio.wait_for(woken.wait(), 5)
    for i in range(100):
        thread.submit(ran.append, i)
    await thread.stop()
    assert ran == list(range(100))


async def test_another_thread_may_run_a_call_and_wait_for_its_result() -> None:
    thread = RelayThread(asyncio.get_running_loop())
    result = await asyncio.to_thread(thread.run, lambda: threading.current_thread().name)
    assert result == "crdtsync-relay"
    with pytest.raises(KeyError):
        await asyncio.to_thread(thread.run, {}.__getitem__, "missing")
    await thread.stop()
