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

    On cancellation the thread is abandoned, counted until it returns, and logged with
    ``what`` (e.g. ``"tool 'search'"``). Raises what ``function`` raises.
    """
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
        return await trio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=limiter)
    except trio.Cancelled:
        global _abandoned
        with _lock:
            if not state["done"]:
                state["abandoned"] = True
                _abandoned += 1
                log.warning(
                    "%s is still running after its rollout was cancelled; its thread is"
                    " abandoned (%d abandoned threads running)",
                    what,
                    _abandoned,
                )
        raise
