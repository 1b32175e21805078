"""Lean HTTP/1.1 on Trio and h11 for benchmarks/scale.py: a trainer, and a client pool.

The mock trainer of rollout.testing runs on Quart and Hypercorn, whose per-request cost
would cap a load test long before the server under test does; this one is a plain Trio TCP
server speaking HTTP/1.1 with h11 (keep-alive), with nothing but what a trainer must do:

- ``POST /v1/chat/completions``: the calculator model's next message
  (:func:`rollout.testing._model.respond`) and a ``usage`` block, after ``delay`` seconds.
  With a barrier of N, a turn-1 call (no assistant message yet) is held until both ``delay``
  seconds passed since it arrived and N turn-1 calls have arrived, so all N are outstanding
  at once; the barrier opens anyway when no turn-1 call arrived for ``barrier_timeout``
  seconds (the server could not send them all), and then stays open.
- ``POST /v1/rollout/completed``: ``200``; the result's ``rollout_id``, ``status`` and
  arrival time (Trio clock, seconds) are recorded.

It counts accepted TCP connections, requests, chat calls outstanding and their peak.

:class:`ClientPool` is the client side: a bounded set of keep-alive h11 connections to one
``host:port`` (used by the load tool for inits, and by the stub server for trainer calls).

A sibling module of scale.py and _stub_server.py (benchmarks/ is not a package).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio

from rollout.testing._model import respond

__all__ = ["ClientPool", "H11Trainer", "Handler", "serve_http"]

#: A request handler: (method, target, body) -> (status, JSON answer body).
Handler = Callable[[str, str, bytes], Awaitable[tuple[int, bytes]]]

_READ = 65536
_JSON = [(b"content-type", b"application/json")]


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    """The next h11 event of ``conn``, reading from ``stream`` as needed."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(_READ))


async def _read_body(conn: h11.Connection, stream: trio.SocketStream) -> bytes:
    """The rest of the current message's body (until ``EndOfMessage``)."""
    chunks: list[bytes] = []
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


async def serve_http(
    handler: Handler,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_connection: Callable[[], None] | None = None,
) -> None:
    """Serve ``handler`` over HTTP/1.1 keep-alive on ``host:port`` until cancelled; reports
    the bound port through ``task_status``. ``on_connection`` is called per accepted
    connection."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=65535)
    bound = listeners[0].socket.getsockname()[1]

    async def connection(stream: trio.SocketStream) -> None:
        if on_connection is not None:
            on_connection()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 24)
        try:
            while True:
                event = await _next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or nonsense
                body = await _read_body(conn, stream)
                try:
                    status, answer = await handler(
                        event.method.decode(), event.target.decode(), body
                    )
                except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a bad body
                    status, answer = 400, json.dumps({"detail": repr(exc)}).encode()
                headers = [*_JSON, (b"content-length", str(len(answer)).encode())]
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=headers))
                    + conn.send(h11.Data(data=answer))
                    + conn.send(h11.EndOfMessage())
                )
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(bound)


@attrs.define(eq=False)
class H11Trainer:
    """The trainer's state: settings, counters, and the results received.

    - ``delay``: seconds before each chat answer.
    - ``barrier``: hold turn-1 answers until this many turn-1 calls arrived (0: no barrier).
    - ``barrier_timeout``: seconds without a new turn-1 call after which the barrier opens.
    - ``results``: rollout_id -> (status, arrival time on the Trio clock, seconds).
    """

    delay: float = 0.0
    barrier: int = 0
    barrier_timeout: float = 10.0
    connections: int = 0
    requests: int = 0
    chat_requests: int = 0
    turn1_arrived: int = 0
    outstanding: int = 0
    peak_outstanding: int = 0
    peak_at: float = math.nan
    barrier_opened_at: float = math.nan
    barrier_reason: str = ""
    turn1_at_opening: int = 0
    duplicates: int = 0
    results: dict[str, tuple[str, float]] = attrs.field(factory=dict)
    _opened: trio.Event = attrs.field(factory=trio.Event)
    _last_turn1: float = 0.0
    _waiters: dict[str, trio.Event] = attrs.field(factory=dict)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def count_connection(self) -> None:
        """One more accepted TCP connection."""
        self.connections += 1

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on a free loopback port (reported through ``task_status``) until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_barrier)
            port = await nursery.start(
                functools.partial(serve_http, self.handle, on_connection=self.count_connection)
            )
            task_status.started(port)

    async def _watch_barrier(self) -> None:
        """Open the barrier when turn-1 calls stopped arriving for ``barrier_timeout`` s."""
        while True:
            await trio.sleep(0.25)
            if self._opened.is_set() or not self.barrier or not self.turn1_arrived:
                continue
            if trio.current_time() - self._last_turn1 > self.barrier_timeout:
                self._open(f"timeout: {self.turn1_arrived} of {self.barrier} turn-1 calls came")

    def _open(self, reason: str) -> None:
        self.barrier_reason = reason
        self.turn1_at_opening = self.turn1_arrived
        self.barrier_opened_at = trio.current_time()
        self._opened.set()

    async def wait_result(self, rollout_id: str) -> tuple[str, float]:
        """Wait for the result of ``rollout_id`` (the caller bounds the wait)."""
        while (found := self.results.get(rollout_id)) is None:
            event = self._waiters.setdefault(rollout_id, trio.Event())
            await event.wait()
        return found

    async def wait_change(self) -> None:
        """Wait for the next result (the caller bounds the wait)."""
        await self._changed.wait()

    async def handle(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        """Answer one request: (status, JSON body)."""
        self.requests += 1
        if method == "POST" and target == "/v1/chat/completions":
            return 200, await self._chat(json.loads(body))
        if method == "POST" and target == "/v1/rollout/completed":
            result = json.loads(body)
            rollout_id = str(result.get("rollout_id"))
            if rollout_id in self.results:
                self.duplicates += 1
            else:
                self.results[rollout_id] = (str(result.get("status")), trio.current_time())
                if (event := self._waiters.pop(rollout_id, None)) is not None:
                    event.set()
                self._changed.set()
                self._changed = trio.Event()
            return 200, b'{"status":"ok"}'
        if target == "/health":
            return 200, b'{"status":"healthy"}'
        return 404, b'{"detail":"not found"}'

    async def _chat(self, body: dict[str, Any]) -> bytes:
        arrived = trio.current_time()
        messages: list[dict[str, Any]] = body["messages"]
        first = not any(m.get("role") == "assistant" for m in messages)
        self.chat_requests += 1
        self.outstanding += 1
        if self.outstanding > self.peak_outstanding:
            self.peak_outstanding, self.peak_at = self.outstanding, arrived
        try:
            if first and self.barrier:
                self.turn1_arrived += 1
                self._last_turn1 = arrived
                if self.turn1_arrived >= self.barrier and not self._opened.is_set():
                    self._open(f"all {self.barrier} turn-1 calls arrived")
            await trio.sleep_until(arrived + self.delay)
            if first and self.barrier:
                await self._opened.wait()
            reply = respond(messages, body.get("tools"))
            return json.dumps(
                {
                    "id": f"chatcmpl-{body.get('rollout_id')}-{len(messages)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "default"),
                    "choices": [
                        {"index": 0, "message": reply.message, "finish_reason": reply.finish_reason}
                    ],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
                }
            ).encode()
        finally:
            self.outstanding -= 1


@attrs.define(eq=False)
class _Connection:
    stream: trio.SocketStream
    conn: h11.Connection
    reused: bool = False


class ClientPool:
    """At most ``size`` keep-alive HTTP/1.1 connections to ``host:port``; a request waits
    for a free one. A reused connection that fails is replaced and the request sent once
    more (the server may have closed it while idle)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._host, self._port = host, port
        self._slots = trio.Semaphore(size)
        self._idle: list[_Connection] = []
        self.opened = 0

    async def post(self, target: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``target``: (status, answer body)."""
        async with self._slots:
            for _attempt in range(2):
                connection = self._idle.pop() if self._idle else await self._open()
                try:
                    answer = await self._exchange(connection, target, body)
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                    await trio.aclose_forcefully(connection.stream)
                    if connection.reused:
                        continue
                    raise
                except BaseException:
                    await trio.aclose_forcefully(connection.stream)
                    raise
                connection.reused = True
                if connection.conn.our_state is h11.IDLE:
                    self._idle.append(connection)
                else:
                    await trio.aclose_forcefully(connection.stream)
                return answer
            raise trio.BrokenResourceError("a fresh connection failed too")

    async def _open(self) -> _Connection:
        self.opened += 1
        stream = await trio.open_tcp_stream(self._host, self._port)
        return _Connection(stream, h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 24))

    async def _exchange(self, c: _Connection, target: str, body: bytes) -> tuple[int, bytes]:
        headers = [
            (b"host", f"{self._host}:{self._port}".encode()),
            *_JSON,
            (b"content-length", str(len(body)).encode()),
        ]
        await c.stream.send_all(
            c.conn.send(h11.Request(method="POST", target=target, headers=headers))
            + c.conn.send(h11.Data(data=body))
            + c.conn.send(h11.EndOfMessage())
        )
        event = await _next_event(c.conn, c.stream)
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError(f"expected a response, got {type(event).__name__}")
        answer = await _read_body(c.conn, c.stream)
        if c.conn.our_state is h11.DONE and c.conn.their_state is h11.DONE:
            c.conn.start_next_cycle()
        return event.status_code, answer

    async def aclose(self) -> None:
        """Close the idle connections."""
        while self._idle:
            await trio.aclose_forcefully(self._idle.pop().stream)
