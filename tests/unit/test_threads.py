"""Sync agent code in worker threads (rollout._threads): a worker slot is held by a running
thread, abandoned or not, and by nothing else."""

from __future__ import annotations

import threading
from collections.abc import Callable

import trio

from rollout._threads import abandoned_threads, run_sync


async def _until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - a thread's doing: nothing to wait on
            await trio.sleep(0.01)


async def test_a_call_cancelled_while_waiting_for_a_worker_slot_just_ends() -> None:
    limiter = trio.CapacityLimiter(1)
    release = threading.Event()
    before = abandoned_threads()
    async with trio.open_nursery() as nursery:

        async def slow() -> None:
            await run_sync(lambda: release.wait(10), limiter=limiter, what="tool 'slow'")

        nursery.start_soon(slow)
        await _until(lambda: limiter.borrowed_tokens == 1)
        with trio.move_on_after(0.05) as waited:  # the only slot is taken: this one waits
            await run_sync(lambda: None, limiter=limiter, what="tool 'queued'")
        assert waited.cancelled_caught
        assert abandoned_threads() == before  # it never had a thread
        assert (limiter.borrowed_tokens, limiter.statistics().tasks_waiting) == (1, 0)
        release.set()
    assert limiter.borrowed_tokens == 0


async def test_an_abandoned_thread_keeps_its_slot_until_it_returns() -> None:
    limiter = trio.CapacityLimiter(1)
    release, started = threading.Event(), threading.Event()
    before = abandoned_threads()

    def hangs() -> None:
        started.set()
        release.wait(10)

    with trio.move_on_after(5) as deadline:
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                await run_sync(hangs, limiter=limiter, what="tool 'hangs'")

            nursery.start_soon(call)
            await _until(started.is_set)
            deadline.cancel()
    assert abandoned_threads() == before + 1
    assert limiter.borrowed_tokens == 1  # the thread still runs in it
    release.set()
    await _until(lambda: limiter.borrowed_tokens == 0)
    assert abandoned_threads() == before
