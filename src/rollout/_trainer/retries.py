"""When a trainer request is tried again (docs/PROTOCOL.md §4.3): which failures, how long
to wait (a ``Retry-After`` replaces the backoff), the budget left, and the line logged."""

from __future__ import annotations

import logging
import math

import httpx
import trio

from ..config import RetryPolicy
from ..errors import TrainerError, TrainerHTTPError, TrainerTransportError

__all__ = ["log_retry", "retry_after", "retry_hook", "time_left"]

log = logging.getLogger("rollout.trainer")


def retry_hook(exc: Exception) -> bool | float:
    """stamina's ``on=`` hook: retry or not, and a ``Retry-After`` that overrides the wait.

    Transport errors and 5xx/408/429 are retried; nothing else (docs/PROTOCOL.md §4.3)."""
    if isinstance(exc, TrainerTransportError):
        return True
    if isinstance(exc, TrainerHTTPError) and exc.retryable:
        return exc.retry_after if exc.retry_after is not None else True
    return False


def retry_after(response: httpx.Response) -> float | None:
    """A ``Retry-After`` in seconds (never negative); None when absent, an HTTP-date or
    not a finite number (then the computed backoff holds)."""
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def log_retry(exc: TrainerError, number: int, backoff: float, policy: RetryPolicy) -> bool:
    """One line per retried attempt: what (method, redacted URL: in the error's message),
    which attempt, how long until the next, and why. Returns whether it will be retried."""
    verdict = retry_hook(exc)
    if verdict is False or (policy.attempts is not None and number >= policy.attempts):
        return False
    wait = verdict if not isinstance(verdict, bool) else backoff
    log.warning("%s; attempt %d failed, retrying in %.2g s or more", exc, number, wait)
    return True


def time_left(timeout: float | None) -> float | None:
    """The retry budget: ``timeout``, shortened to the time left before the Trio deadline."""
    deadline = trio.current_effective_deadline()
    if math.isinf(deadline):
        return timeout
    left = max(0.0, deadline - trio.current_time())
    return left if timeout is None else min(timeout, left)
