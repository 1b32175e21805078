"""One keep-alive HTTP/1.1 connection to a trainer: h11's state machine over a Trio stream.

h11 does the protocol: framing, parsing, validation of what is sent and received, and
whether a connection may carry another request. This module only moves bytes between h11
and the socket, under the request's timeouts, and turns every failure into the httpx
exception httpx's own transport would raise, so that callers see no difference.

It exists for memory: an outstanding call through httpx's transport and httpcore's pool
held ~15 KB and ~90 objects until its answer came; a trainer client's call through this,
~6 KB and ~34 (``benchmarks/http_clients.py``, docs/PERFORMANCE.md). With 20,000 calls
outstanding at a trainer that is 120 MB, and objects the garbage collector walks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import h11
import httpx
import trio

__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_INFORMATIONAL",
    "Connection",
    "Content",
    "Headers",
    "Origin",
    "Timeouts",
    "deadline",
    "reason",
]

#: Bytes asked of the socket at a time.
READ_BYTES = 64 * 1024
#: Bytes of a response's status line and headers received without their end, past which
#: the answer is refused (h11 checks it after each read; httpcore's bound too).
MAX_HEAD_BYTES = 100 * 1024
#: The most informational (1xx) answers before the answer: a trainer sending them without
#: end, each within the read timeout, would otherwise hold the call forever.
MAX_INFORMATIONAL = 16

#: Called when a response is closed: the connection, and whether its answer was read whole.
Release = Callable[["Connection", bool], None]
#: Where a connection goes: scheme, host and port.
Origin = tuple[str, str, int]
#: A request's header lines, raw: (name, value).
Headers = Sequence[tuple[bytes, bytes]]
#: A request's body, asked for when the request is written (once per attempt): an
#: outstanding call then holds no copy of it.
Content = Callable[[], bytes]
#: Seconds per phase ("connect", "read", "write", "pool"; None or absent: none), httpx's
#: ``timeout`` extension.
Timeouts = Mapping[str, float | None]


class Connection:
    """One HTTP/1.1 connection over ``stream``, one request at a time.

    :meth:`request` raises httpx's exceptions: ``WriteError``/``WriteTimeout`` and
    ``ReadError``/``ReadTimeout`` from the socket, ``RemoteProtocolError`` for an answer
    that is not HTTP/1.1 (or a connection closed before it), ``LocalProtocolError`` for a
    request h11 will not send (a header with a line break, say). Timeouts are seconds, per
    read or write, from the request's ``timeout`` extension (``None``: none).
    """

    __slots__ = ("_h11", "idle_since", "origin", "socket", "stream")

    def __init__(
        self, stream: trio.abc.Stream, socket: trio.socket.SocketType, origin: Origin
    ) -> None:
        self.stream = stream
        #: Where it goes: scheme, host, port.
        self.origin = origin
        #: The TCP socket under ``stream`` (under TLS too), to see whether an idle
        #: connection was closed by the trainer.
        self.socket = socket
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        #: When it was last given back idle (Trio clock, seconds).
        self.idle_since = 0.0

    def stale(self) -> bool:
        """Whether an idle connection cannot carry a request: the trainer closed it, or
        sent something unasked."""
        return self.socket.is_readable()

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        content: Content,
        timeouts: Timeouts,
        release: Release,
    ) -> httpx.Response:
        """Send a request (``headers`` with its Host; the Content-Length of ``content()`` is
        added) and read its answer's head. The answer's body streams from the returned
        response; closing the response calls ``release(self, read_whole)``."""
        # A trainer may answer (413, 401) and close before reading the whole request: its
        # answer is still the one to report.
        with contextlib.suppress(httpx.WriteError):
            await self._send(method, target, headers, content, timeouts.get("write"))
        read_timeout = timeouts.get("read")
        if isinstance(self.stream, trio.SocketStream):
            # Wait for the answer to start with four frames held, not the nine of a
            # stream read (the answer may take seconds; 20,000 calls may wait at once).
            # Under TLS a read must do it: bytes may be waiting inside the TLS layer.
            with trio.CancelScope(deadline=deadline(read_timeout)) as waiting:
                try:
                    await trio.lowlevel.wait_readable(self.socket)
                except (trio.ClosedResourceError, OSError) as exc:
                    raise httpx.ReadError(reason(exc)) from None
            if waiting.cancelled_caught:
                raise httpx.ReadTimeout("reading from the trainer timed out")
        event = await self.next_event(read_timeout)
        informational = 0
        while isinstance(event, h11.InformationalResponse):  # 100 Continue and the like
            informational += 1
            if informational > MAX_INFORMATIONAL:
                raise httpx.RemoteProtocolError(
                    f"the trainer sent more than {MAX_INFORMATIONAL} informational (1xx) answers"
                )
            event = await self.next_event(read_timeout)
        if not isinstance(event, h11.Response):
            raise httpx.RemoteProtocolError("the trainer closed the connection without answering")
        return httpx.Response(
            event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(self, read_timeout, release),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason},
        )

    async def _send(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        content: Content,
        timeout: float | None,  # noqa: ASYNC109
    ) -> None:
        """Write the whole request at once; its bytes are not kept past the write."""
        body = content()
        framed = [*headers, (b"content-length", b"%d" % len(body))]
        try:
            data = self._h11.send(h11.Request(method=method, target=target, headers=framed))
            if body:
                data += self._h11.send(h11.Data(data=body))
            data += self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from None
        with trio.CancelScope(deadline=deadline(timeout)):
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise httpx.WriteError(reason(exc)) from None
            return
        raise httpx.WriteTimeout("writing to the trainer timed out")

    def reusable(self) -> bool:
        """After an answer read whole: whether another request may follow (both sides
        done, no ``Connection: close``, nothing sent past the answer); if so, readies h11
        for it."""
        if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
            return False
        if self._h11.trailing_data[0]:  # bytes past the answer: not a trainer to trust
            return False
        self._h11.start_next_cycle()
        return True

    async def next_event(self, timeout: float | None) -> object:  # noqa: ASYNC109
        """h11's next event, reading from the socket as needed (``timeout`` per read)."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from None
            if event is not h11.NEED_DATA:
                return event
            with trio.CancelScope(deadline=deadline(timeout)) as reading:
                try:
                    data = await self.stream.receive_some(READ_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise httpx.ReadError(reason(exc)) from None
            if reading.cancelled_caught:
                raise httpx.ReadTimeout("reading from the trainer timed out")
            self._h11.receive_data(data if isinstance(data, bytes) else bytes(data))


class _Body(httpx.AsyncByteStream):
    """A response's body, read as it is iterated; closing it gives the connection back."""

    __slots__ = ("_connection", "_done", "_release", "_timeout")

    def __init__(self, connection: Connection, timeout: float | None, release: Release) -> None:
        self._connection = connection
        self._timeout = timeout
        self._release: Release | None = release
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            event = await self._connection.next_event(self._timeout)
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._done = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        # No checkpoint: when a trainer answers thousands of calls at once, a yield here
        # would park every rollout holding its whole answer (docs/PERFORMANCE.md).
        release, self._release = self._release, None
        if release is not None:
            release(self._connection, self._done)


def deadline(timeout: float | None) -> float:
    """The Trio-clock deadline ``timeout`` seconds from now (None: never)."""
    return math.inf if timeout is None else trio.current_time() + timeout


def reason(exc: BaseException) -> str:
    """What a Trio stream error was caused by, in one line (its cause's message or type)."""
    cause = exc.__cause__ or exc.__context__ or exc
    return str(cause) or type(cause).__name__
