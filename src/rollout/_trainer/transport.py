"""How trainer calls reach a trainer (:class:`~rollout._trainer.client.TrainerClient` sends each
request to its transport directly, without :class:`httpx.AsyncClient`).

- :func:`policed_transport`: the server's. Keep-alive HTTP/1.1 connections
  (:mod:`rollout._trainer.pool`) that obey the trainer policy (:mod:`rollout._trainer.policy`).
- :class:`ClientTransport`: a developer's machine (``rollout test``, ``rollout eval``), where
  the environment's proxies and CA files apply.
- :func:`sender`: how the client sends through either (or any httpx transport).

And the URLs: :func:`endpoint` builds one, :func:`parsed_url` parses it once,
:func:`redact_url` names it in every log line and error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from urllib.parse import urlsplit, urlunsplit

import httpx

from .http11 import Content, Headers, Timeouts
from .policy import TrainerPolicy, connect
from .pool import ConnectionPool

__all__ = [
    "ClientTransport",
    "RedactURLs",
    "Send",
    "endpoint",
    "parsed_url",
    "policed_transport",
    "redact_url",
    "same_timeouts",
    "sender",
]

#: How long an idle connection to a trainer is kept for reuse, seconds.
KEEPALIVE_SECONDS = 30.0


def endpoint(server_url: str, path: str) -> str:
    """``path`` appended to ``server_url``'s path, before its query, if any."""
    parts = urlsplit(server_url)
    if not parts.query:
        return server_url + path
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> httpx.URL:
    """``url`` parsed once and shared (immutable) by every call to it: a trainer's
    endpoints are few, each outstanding call otherwise held its own parse."""
    return httpx.URL(url)


def redact_url(url: str | httpx.URL) -> str:
    """``url`` without user info and with its query replaced by ``***``, for logs and error
    messages (a token may hide in either)."""
    parts = urlsplit(str(url))
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else ""))


class RedactURLs(logging.Filter):
    """Redacts every URL argument of a log record (:func:`redact_url`): httpx logs each
    request's full URL, which may carry a token in its query or user info."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                redact_url(a) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def _redact_httpx_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, RedactURLs) for f in logger.filters):
        logger.addFilter(RedactURLs())


class ClientTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncClient` (no redirects followed) used as a transport, for runs
    on a developer's machine (``rollout test``, ``rollout eval``): it keeps what the client
    reads from the environment (proxies, CA files). The client logs each request's URL:
    redacted (:class:`RedactURLs`). Closing the transport closes the client."""

    def __init__(self) -> None:
        _redact_httpx_logs()
        self._client = httpx.AsyncClient(follow_redirects=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._client.send(request, stream=True)

    async def aclose(self) -> None:
        await self._client.aclose()


def policed_transport(policy: TrainerPolicy, max_connections: int | None = None) -> ConnectionPool:
    """The server's transport: keep-alive HTTP/1.1 connections
    (:class:`~rollout._trainer.pool.ConnectionPool`) opened only to addresses ``policy``
    allows (:func:`~rollout._trainer.policy.connect`, docs/PROTOCOL.md §8), at most
    ``max_connections`` (None: no limit), TLS verified against certifi's CA bundle. No
    proxy from the environment: one would bypass the policy."""
    return ConnectionPool(
        functools.partial(connect, policy),
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=max_connections,
        keepalive_seconds=KEEPALIVE_SECONDS,
    )


@functools.lru_cache(maxsize=64)
def same_timeouts(seconds: float | None) -> Timeouts:
    """The same ``seconds`` for every phase, shared by every call that uses it."""
    return MappingProxyType(dict.fromkeys(("connect", "read", "write", "pool"), seconds))


#: Sends one request: method, URL, headers (with Host), body, timeouts; returns the answer
#: once its head is read, its body streamed (:meth:`ConnectionPool.send`).
Send = Callable[[bytes, httpx.URL, Headers, Content, Timeouts], Awaitable[httpx.Response]]


def sender(transport: httpx.AsyncBaseTransport) -> Send:
    """How requests reach ``transport``: our pool's :meth:`~ConnectionPool.send`, or an
    :class:`httpx.Request` for any other (MockTransport in tests, :class:`ClientTransport`)."""
    if isinstance(transport, ConnectionPool):
        return transport.send

    async def send(
        method: bytes, url: httpx.URL, headers: Headers, content: Content, timeouts: Timeouts
    ) -> httpx.Response:
        request = httpx.Request(
            method.decode("ascii"),
            url,
            headers=headers,
            content=content(),
            extensions={"timeout": timeouts},
        )
        return await transport.handle_async_request(request)

    return send
