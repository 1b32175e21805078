"""The httpx transports trainer calls go through (:class:`~rollout._trainer.client.TrainerClient`
sends each request to its transport directly, without :class:`httpx.AsyncClient`).

- :func:`policed_transport`: the server's. Sharded keep-alive pools
  (:mod:`rollout._trainer.pool`) whose connections obey the trainer policy
  (:mod:`rollout._trainer.policy`).
- :class:`ClientTransport`: a developer's machine (``rollout test``, ``rollout eval``), where
  the environment's proxies and CA files apply.

And :func:`redact_url`, how every log line and error names a trainer's URL.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

from .policy import PolicyBackend, TrainerPolicy
from .pool import ShardedPool

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


def policed_transport(
    policy: TrainerPolicy, max_connections: int | None = None
) -> httpx.AsyncHTTPTransport:
    """httpx's transport over a :class:`ShardedPool` of httpcore pools whose network
    backend applies ``policy`` to every address it connects to
    (:class:`~rollout._trainer.policy.PolicyBackend`, docs/PROTOCOL.md §8). No proxy from
    the environment: one would bypass the policy.

    httpx has no public hook for a network backend or a pool, so the pool is put in place
    of the one ``AsyncHTTPTransport`` builds (httpx 0.28); a test checks that the policy
    holds at connect time, so a change of httpx cannot silently drop it.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    ssl_context = transport._pool._ssl_context
    backend = PolicyBackend(policy)

    def make_pool(size: int) -> httpcore.AsyncConnectionPool:
        return httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=size,
            max_keepalive_connections=size,
            keepalive_expiry=KEEPALIVE_SECONDS,
            network_backend=backend,
        )

    transport._pool = ShardedPool(
        make_pool, max_connections=max_connections, idle_seconds=KEEPALIVE_SECONDS
    )  # type: ignore[assignment]
    return transport
