"""Sync agent code (tools, reward functions) in worker threads, and the threads a deadline
had to abandon.

A thread cannot be interrupted: when a rollout's deadline or a shutdown cancels a sync tool
or reward function, the rollout moves on (``abandon_on_cancel``) and the thread runs on
until the function returns, holding its worker slot until then. :func:`run_sync` counts
such threads (:func:`abandoned_threads`, in ``/health``) and logs each, so a hung tool is
seen rather than silently eating the thread pool.
"""

from __future__ import annotations

import logging
import threading
import typing
from collections.abc import Callable
from typing import TypeVar

import trio

__all__ = ["abandoned_threads", "run_sync"]

log = logging.getLogger("rollout.threads")

T = TypeVar("T")

_lock = threading.Lock()
_abandoned = 0


def abandoned_threads() -> int:
    """Worker threads abandoned by a cancelled rollout and still running, process-wide."""
    return _abandoned


async def run_sync(
    function: Callable[[], T], *, limiter: trio.CapacityLimiter | None, what: str
) -> T:
    """``function()`` in a worker thread (bounded by ``limiter``; Trio's default when None).

    On cancellation a running thread is abandoned, keeps its worker slot and is counted
    until it returns, and is logged with ``what`` (e.g. ``"tool 'search'"``); a call
    cancelled before its thread started just ends. Raises what ``function`` raises.
    """
    limiter = limiter or trio.to_thread.current_default_thread_limiter()
    # Wait for a worker slot before Trio builds its thread machinery (a name, closures, a
    # context copy): when thousands of rollouts call a sync tool at once, each waits here
    # holding little more than this frame (docs/PERFORMANCE.md).
    slot = _Slot(limiter)
    await limiter.acquire_on_behalf_of(slot)
    try:
        return await _in_thread(function, slot, what)
    finally:
        if not slot.handed_over:  # cancelled before Trio took the slot: ours to give back
            limiter.release_on_behalf_of(slot)


class _Slot:
    """A worker slot of ``limiter``, taken before :func:`trio.to_thread.run_sync` is called
    and handed to it as its limiter: Trio gives it back when the thread returns (an
    abandoned thread too)."""

    __slots__ = ("_limiter", "handed_over")

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        self.handed_over = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        self.handed_over = True  # already acquired; no checkpoint, so no cancellation here

    def release_on_behalf_of(self, borrower: object) -> None:
        self._limiter.release_on_behalf_of(self)


async def _in_thread(function: Callable[[], T], slot: _Slot, what: str) -> T:
    state = {"done": False, "abandoned": False}

    def call() -> T:
        global _abandoned
        try:
            return function()
        finally:
            with _lock:
                state["done"] = True
                if state["abandoned"]:
                    _abandoned -= 1
                    log.warning("%s returned after its rollout had moved on", what)

    try:
        # Trio takes any object with the limiter's two methods (its docs); typed narrower.
        limiter = typing.cast(trio.CapacityLimiter, slot)
        return await trio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=limiter)
    except trio.Cancelled:
        global _abandoned
        with _lock:
            if slot.handed_over and not state["done"]:  # its thread started and runs on
                state["abandoned"] = True
                _abandoned += 1
                log.warning(
                    "%s is still running after its rollout was cancelled; its thread is"
                    " abandoned (%d abandoned threads running)",
                    what,
                    _abandoned,
                )
        raise
