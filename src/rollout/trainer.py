"""The trainer client: chat completions and result delivery, with retries.

One :class:`TrainerClient` wraps one long-lived, pooled :class:`httpx.AsyncClient` shared by
every rollout (the reference opened a client per rollout). Retries use :mod:`stamina`:
capped exponential backoff with jitter, on 5xx/408/429, timeouts and transport errors, never
on other 4xx (PROTOCOL.md §2). A ``Retry-After`` header (seconds) replaces the computed
backoff. Chat retries never go past the caller's Trio deadline: the retry budget is the
time left in the enclosing cancel scope.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx
import stamina
import trio

from ._json import JSON
from .errors import (
    MalformedCompletionError,
    TrainerError,
    TrainerHTTPError,
    TrainerTransportError,
)
from .protocol import Completion, RolloutResult, ValidationError, parse_completion

__all__ = ["RetryPolicy", "TrainerClient"]

log = logging.getLogger("rollout.trainer")

CHAT_PATH = "/v1/chat/completions"
#: Where seed 000's synchronous variant sends LLM turns (the same chat body).
SYNC_COMPLETIONS_PATH = "/v1/completions"
COMPLETED_PATH = "/v1/rollout/completed"
#: How much of an error body goes into an error message.
_BODY_SNIPPET_CHARS = 300


@attrs.frozen
class RetryPolicy:
    """How one kind of trainer request is retried. Times in seconds.

    ``attempts`` counts the first try (``None``: unlimited, bounded by ``timeout``);
    ``timeout`` bounds all attempts and waits together (``None``: only the caller's deadline);
    ``request_timeout`` bounds one attempt (connect, each read and write).
    """

    attempts: int | None = 5
    timeout: float | None = None
    request_timeout: float = 300.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 1.0


def _retry_hook(exc: Exception) -> bool | float:
    """stamina's ``on=`` hook: retry or not, and a ``Retry-After`` that overrides the wait."""
    if isinstance(exc, TrainerTransportError):
        return True
    if isinstance(exc, TrainerHTTPError) and exc.retryable:
        return exc.retry_after if exc.retry_after is not None else True
    return False


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def redact_url(url: str) -> str:
    """``url`` without user info, for logs and error messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class TrainerClient:
    """Talks to trainers: ``POST {server_url}/v1/chat/completions`` and
    ``POST {server_url}/v1/rollout/completed``.

    ``http`` is owned by the caller, who closes it after the last request (the app does so
    only after every rollout was drained, see :mod:`rollout.app`).
    """

    def __init__(
        self, http: httpx.AsyncClient, *, chat: RetryPolicy, delivery: RetryPolicy
    ) -> None:
        self.http = http
        self.chat_policy = chat
        self.delivery_policy = delivery

    async def chat(
        self,
        server_url: str,
        body: Mapping[str, JSON],
        *,
        api_key: str | None,
        path: str = CHAT_PATH,
    ) -> Completion:
        """Send one chat request and parse the completion.

        Retries per :attr:`chat_policy` within the time left before the current Trio
        deadline. Raises :class:`~rollout.errors.TrainerHTTPError` (final status),
        :class:`~rollout.errors.TrainerTransportError` (no answer) or
        :class:`~rollout.errors.MalformedCompletionError` (a 2xx that is not a completion;
        not retried: the trainer already generated it).
        """
        url = server_url + path
        response = await self._post(url, body, api_key, self.chat_policy)
        try:
            return parse_completion(response.json())
        except ValueError as exc:  # ValidationError, or a body that is not JSON at all
            reason = (
                exc
                if isinstance(exc, ValidationError)
                else f"not JSON: {response.text[:_BODY_SNIPPET_CHARS]!r}"
            )
            raise MalformedCompletionError(
                f"POST {redact_url(url)} answered HTTP {response.status_code}"
                f" with a malformed chat completion: {reason}"
            ) from None

    async def deliver(self, server_url: str, result: RolloutResult, *, api_key: str | None) -> None:
        """Post a result until a 2xx acknowledges it (any 2xx, PROTOCOL.md §2).

        Retries per :attr:`delivery_policy`. The result is sent unchanged on every attempt:
        a delivery failure never rewrites it. Raises :class:`~rollout.errors.TrainerError`
        when it could not be delivered.
        """
        await self.deliver_json(server_url, result.to_json(), api_key=api_key)

    async def deliver_json(
        self, server_url: str, body: Mapping[str, JSON], *, api_key: str | None
    ) -> None:
        """:meth:`deliver` for a result already in its wire JSON (e.g. from the outbox)."""
        await self._post(server_url + COMPLETED_PATH, body, api_key, self.delivery_policy)

    async def _post(
        self, url: str, body: Mapping[str, JSON], api_key: str | None, policy: RetryPolicy
    ) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        attempt_number = 0
        try:
            async for attempt in stamina.retry_context(
                on=_retry_hook,
                attempts=policy.attempts,
                timeout=_time_left(policy.timeout),
                wait_initial=policy.wait_initial,
                wait_max=policy.wait_max,
                wait_jitter=policy.wait_jitter,
            ):
                with attempt:
                    attempt_number = attempt.num
                    return await self._post_once(url, content, headers, policy.request_timeout)
        except TrainerError as exc:
            if attempt_number > 1:
                exc.args = (f"{exc.args[0]} (after {attempt_number} attempts)",)
            raise
        raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover

    async def _post_once(
        self, url: str, content: bytes, headers: dict[str, str], request_timeout: float
    ) -> httpx.Response:
        where = f"POST {redact_url(url)}"
        try:
            response = await self.http.post(
                url, content=content, headers=headers, timeout=request_timeout
            )
        except httpx.TimeoutException as exc:
            raise TrainerTransportError(f"{where} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TrainerTransportError(f"{where} failed: {type(exc).__name__}: {exc}") from None
        if not response.is_success:
            snippet = response.text[:_BODY_SNIPPET_CHARS]
            raise TrainerHTTPError(
                f"{where} answered HTTP {response.status_code}: {snippet}",
                status=response.status_code,
                retry_after=_retry_after(response),
            )
        return response


def _time_left(timeout: float | None) -> float | None:
    """The retry budget: ``timeout``, shortened to the time left before the Trio deadline."""
    deadline = trio.current_effective_deadline()
    if math.isinf(deadline):
        return timeout
    left = max(0.0, deadline - trio.current_time())
    return left if timeout is None else min(timeout, left)
