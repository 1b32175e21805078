"""Connections to trainers: keep-alive HTTP/1.1, per trainer origin, as many as the calls
outstanding need.

A trainer's inference engine batches whatever calls are outstanding, so every rollout's
call should be at the trainer at once, each on its own connection (HTTP/1.1 carries one
request at a time). :class:`ConnectionPool` opens a connection when none of its origin is
idle, and keeps a connection whose answer was read whole for the next call to that origin
(the most recently used first, so that after a peak the surplus stays idle and is closed
after ``keepalive_seconds``). Finding one is O(1); nothing is done per connection on a
request, unlike httpcore 1.0's pool, whose work on every request grows with its size
(docs/PERFORMANCE.md).

:meth:`ConnectionPool.send` is what :class:`~rollout._trainer.client.TrainerClient` calls: no
:class:`httpx.Request` is made, and the body is asked for when it is written, so an
outstanding call holds neither. The pool is an httpx transport too
(:meth:`~ConnectionPool.handle_async_request`), like httpx's own or
:class:`httpx.MockTransport` in tests.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable

import httpx
import trio

from .http11 import Connection, Content, Headers, Origin, Timeouts, deadline, reason

__all__ = ["Connect", "ConnectionPool"]

#: Opens a TCP connection to (host, port) within a timeout (seconds, None: none); raises
#: httpx.ConnectError or httpx.ConnectTimeout, or refuses (a TrainerError).
Connect = Callable[[str, int, float | None], Awaitable[trio.SocketStream]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Request headers :meth:`Connection.request` sets itself (the body is sent whole).
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class ConnectionPool(httpx.AsyncBaseTransport):
    """An httpx transport over keep-alive HTTP/1.1 connections (:mod:`rollout._trainer.http11`)
    made with ``connect``, with TLS by ``ssl_context`` for ``https``.

    At most ``max_connections`` connections in all (None: no limit); past it a request
    waits for one, up to its ``pool`` timeout (then ``httpx.PoolTimeout``). An idle
    connection is kept ``keepalive_seconds``; the expired ones are closed at most every
    ``keepalive_seconds / 2``, on a request or by :meth:`prune_forever`. Raises httpx's
    exceptions, like its transport.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int | None = None,
        keepalive_seconds: float = 30.0,
    ) -> None:
        self._connect = connect
        self._ssl_context = ssl_context
        self._slots = None if max_connections is None else trio.Semaphore(max_connections)
        self._keepalive = keepalive_seconds
        #: Idle connections per origin, the most recently used last.
        self._idle: dict[Origin, list[Connection]] = {}
        self._next_prune = -math.inf
        self._closed = False
        #: Connections opened so far, and open now (idle or carrying a request).
        self.opened = 0
        self.open = 0

    async def send(
        self,
        method: bytes,
        url: httpx.URL,
        headers: Headers,
        content: Content,
        timeouts: Timeouts,
    ) -> httpx.Response:
        """Send a request to ``url`` (``headers`` with its Host; Content-Length is added for
        ``content()``, asked for once, when the request is written) and return the answer
        once its head is read; its body streams, and closing it gives the connection back.
        ``timeouts`` are seconds per phase (httpx's ``timeout`` extension). Raises httpx's
        exceptions, like its transport."""
        port = _DEFAULT_PORTS.get(url.scheme)
        if port is None:
            raise httpx.UnsupportedProtocol(f"the URL scheme must be http or https: {url.scheme!r}")
        origin = (url.scheme, url.raw_host.decode("ascii"), url.port or port)
        if self._closed:
            raise httpx.ConnectError("the connection pool is closed")
        self._prune()
        if self._slots is not None:
            with trio.move_on_at(deadline(timeouts.get("pool"))) as waited:
                await self._slots.acquire()
            if waited.cancelled_caught:
                raise httpx.PoolTimeout("no connection to the trainer came free in time")
        connection = None
        try:
            connection = self._take(origin) or await self._open(origin, timeouts.get("connect"))
            return await connection.request(
                method, url.raw_path, headers, content, timeouts, self._release
            )
        except BaseException:
            if connection is not None:
                self._discard(connection)
            if self._slots is not None:
                self._slots.release()
            raise

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """:meth:`send` for an :class:`httpx.Request` (its body read whole first)."""
        content = await request.aread()
        headers = [
            (name, value) for name, value in request.headers.raw if name.lower() not in _FRAMING
        ]
        return await self.send(
            request.method.encode("ascii"),
            request.url,
            headers,
            lambda: content,
            request.extensions.get("timeout", {}),
        )

    def _take(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.stale():
                return connection
            self._discard(connection)
        return None

    async def _open(self, origin: Origin, timeout: float | None) -> Connection:  # noqa: ASYNC109
        scheme, host, port = origin
        handshake_deadline = deadline(timeout)
        socket_stream = await self._connect(host, port, timeout)
        stream: trio.abc.Stream = socket_stream
        if scheme == "https":
            stream = trio.SSLStream(
                socket_stream, self._ssl_context, server_hostname=host, https_compatible=True
            )
            try:
                with trio.move_on_at(handshake_deadline) as handshake:
                    await stream.do_handshake()
            except BaseException as exc:
                socket_stream.socket.close()
                if isinstance(exc, trio.BrokenResourceError):
                    cause = reason(exc)
                    raise httpx.ConnectError(f"TLS with the trainer failed: {cause}") from None
                raise
            if handshake.cancelled_caught:
                socket_stream.socket.close()
                raise httpx.ConnectTimeout("the TLS handshake with the trainer timed out")
        self.opened += 1
        self.open += 1
        return Connection(stream, socket_stream.socket, origin)

    def _release(self, connection: Connection, read_whole: bool) -> None:
        """A response was closed: keep its connection for the next call, or close it."""
        if self._slots is not None:
            self._slots.release()
        if read_whole and not self._closed and connection.reusable():
            connection.idle_since = trio.current_time()
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            self._discard(connection)

    def _discard(self, connection: Connection) -> None:
        """Close a connection's socket at once (no TLS goodbye: a broken or idle connection
        owes the trainer nothing)."""
        self.open -= 1
        connection.socket.close()

    async def prune_forever(self) -> None:
        """Close idle connections as they expire, also while no request comes (a request
        prunes too): a quiet trainer leaves no sockets open for long. Runs until cancelled."""
        while True:
            await trio.sleep(self._keepalive / 2)
            self._prune()

    def _prune(self) -> None:
        """Close the connections idle for ``keepalive_seconds``, at most every half of it."""
        now = trio.current_time()
        if now < self._next_prune:
            return
        self._next_prune = now + self._keepalive / 2
        for origin, idle in list(self._idle.items()):
            expired = 0
            while expired < len(idle) and now - idle[expired].idle_since >= self._keepalive:
                expired += 1
            for connection in idle[:expired]:
                self._discard(connection)
            del idle[:expired]
            if not idle:
                del self._idle[origin]

    async def aclose(self) -> None:
        """Close the idle connections; those carrying a request close when it ends."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                self._discard(connection)
        await trio.lowlevel.checkpoint()
