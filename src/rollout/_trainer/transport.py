"""The httpx transports trainer calls go through (:class:`~rollout._trainer.client.TrainerClient`
sends each request to its transport directly, without :class:`httpx.AsyncClient`).

- :func:`policed_transport`: the server's. Keep-alive HTTP/1.1 connections
  (:mod:`rollout._trainer.pool`) that obey the trainer policy (:mod:`rollout._trainer.policy`).
- :class:`ClientTransport`: a developer's machine (``rollout test``, ``rollout eval``), where
  the environment's proxies and CA files apply.

And :func:`redact_url`, how every log line and error names a trainer's URL.
"""

from __future__ import annotations

import functools
import logging
from urllib.parse import urlsplit, urlunsplit

import httpx

from .policy import TrainerPolicy, connect
from .pool import ConnectionPool

__all__ = ["ClientTransport", "RedactURLs", "policed_transport", "redact_url"]

#: How long an idle connection to a trainer is kept for reuse, seconds.
KEEPALIVE_SECONDS = 30.0


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
