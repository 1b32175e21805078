"""The trainer connection pool (rollout._trainer.pool and .http11) against a real HTTP/1.1
server on 127.0.0.1: connections opened as calls are outstanding and reused after, stale
and expired ones closed, the limit, TLS, and every failure as httpx's exception."""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import h11
import httpx
import pytest
import trio
import trustme

from rollout._trainer.http11 import MAX_HEAD_BYTES, MAX_INFORMATIONAL
from rollout._trainer.pool import ConnectionPool

TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


@attrs.define
class Server:
    """A loopback HTTP/1.1 server: answers each request with ``answer(target)``."""

    port: int = 0
    connections: int = 0
    requests: int = 0
    #: Each request's header lines (lower-case names) and body, in order.
    heads: list[list[tuple[bytes, bytes]]] = attrs.Factory(list)
    bodies: list[bytes] = attrs.Factory(list)
    #: Set when a connection's handler has ended (its socket closed).
    closed: trio.Event = attrs.Factory(trio.Event)


Answer = Callable[[str], Awaitable[tuple[int, bytes, bool]]]


async def _ok(target: str) -> tuple[int, bytes, bool]:
    return 200, b'{"ok":true}', False


@asynccontextmanager
async def serving(
    answer: Answer = _ok,
    ssl_context: ssl.SSLContext | None = None,
    raw: bytes | None = None,
    linger: bool = False,
) -> AsyncIterator[Server]:
    """``answer`` gives (status, body, close after answering). ``raw``: send these bytes
    instead of an HTTP answer, then close (or, with ``linger``, keep the connection open)."""
    server = Server()

    async def handle(stream: trio.abc.Stream) -> None:
        server.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Request):
                    server.requests += 1
                    server.heads.append(list(event.headers))
                    server.bodies.append(b"")
                    target = event.target.decode()
                elif isinstance(event, h11.Data):
                    server.bodies[-1] += event.data
                elif isinstance(event, h11.EndOfMessage):
                    if raw is not None:
                        await stream.send_all(raw)
                        if linger:
                            await trio.sleep_forever()
                        return
                    status, body, close = await answer(target)
                    headers = [("content-length", str(len(body)))]
                    await stream.send_all(
                        conn.send(h11.Response(status_code=status, headers=headers))
                        + conn.send(h11.Data(data=body))
                        + conn.send(h11.EndOfMessage())
                    )
                    if close:
                        return
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)
            server.closed.set()
            server.closed = trio.Event()

    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server.port = tcp[0].socket.getsockname()[1]
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
    if ssl_context is not None:
        listeners = [trio.SSLListener(listener, ssl_context) for listener in tcp]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        yield server
        nursery.cancel_scope.cancel()


def _pool(
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int | None = None,
    keepalive_seconds: float = 30.0,
) -> ConnectionPool:
    async def connect(host: str, port: int, timeout: float | None) -> trio.SocketStream:  # noqa: ASYNC109
        return await trio.open_tcp_stream("127.0.0.1", port)

    return ConnectionPool(
        connect,
        ssl_context=ssl_context or ssl.create_default_context(),
        max_connections=max_connections,
        keepalive_seconds=keepalive_seconds,
    )


async def _call(transport: ConnectionPool, url: str, /, **timeouts: float) -> bytes:
    request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": TIMEOUTS | timeouts})
    response = await transport.handle_async_request(request)
    try:
        return await response.aread()
    finally:
        await response.aclose()


async def test_a_connection_carries_the_calls_that_follow_it() -> None:
    async with serving() as server, _pool() as pool:
        for _ in range(5):
            assert await _call(pool, f"http://127.0.0.1:{server.port}/x") == b'{"ok":true}'
    assert (server.connections, server.requests, pool.opened) == (1, 5, 1)


async def test_outstanding_calls_each_get_a_connection_reused_after() -> None:
    go, all_there, waiting = trio.Event(), trio.Event(), [0]

    async def held(target: str) -> tuple[int, bytes, bool]:
        waiting[0] += 1
        if waiting[0] == 8:
            all_there.set()
        await go.wait()
        return 200, b"held", False

    async with serving(held) as server, _pool() as pool:
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(_call, pool, f"http://127.0.0.1:{server.port}/")
                await all_there.wait()
                assert pool.open == 8  # all eight at the server at once
                go.set()
            go, all_there, waiting = trio.Event(), trio.Event(), [0]
        assert (server.connections, server.requests, pool.opened) == (8, 16, 8)


async def test_an_outstanding_call_holds_no_copy_of_its_body() -> None:
    # 20,000 calls wait at a trainer at once: none may keep its body past writing it.
    body = b'{"messages":["' + b"x" * 4096 + b'"]}'
    asked: list[bytes] = []
    arrived, go = trio.Event(), trio.Event()

    def content() -> bytes:
        asked.append(body)
        return asked.pop()

    async def held(target: str) -> tuple[int, bytes, bool]:
        arrived.set()
        await go.wait()
        return 200, b"{}", False

    async with serving(held) as server, _pool() as pool:
        url = httpx.URL(f"http://127.0.0.1:{server.port}/v1/chat/completions")
        held_before = sys.getrefcount(body)
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                headers = [(b"host", url.netloc)]
                response = await pool.send(b"POST", url, headers, content, TIMEOUTS)
                await response.aread()
                await response.aclose()

            nursery.start_soon(call)
            await arrived.wait()
            assert sys.getrefcount(body) == held_before  # written, and nobody holds it
            go.set()
    assert server.bodies == [body]
    assert (b"content-length", str(len(body)).encode()) in server.heads[0]


async def test_a_streamed_httpx_request_is_sent_whole_with_its_length() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    async with serving() as server, _pool() as pool:
        request = httpx.Request(
            "POST",
            f"http://127.0.0.1:{server.port}/x",
            content=chunks(),
            extensions={"timeout": TIMEOUTS},
        )
        assert request.headers["transfer-encoding"] == "chunked"
        response = await pool.handle_async_request(request)
        assert await response.aread() == b'{"ok":true}'
        await response.aclose()
    (head,) = server.heads
    assert server.bodies == [b'{"a":1}']
    assert (b"content-length", b"7") in head
    assert not [name for name, _ in head if name == b"transfer-encoding"]


async def test_a_connection_the_trainer_closed_while_idle_is_not_used() -> None:
    async def close_after(target: str) -> tuple[int, bytes, bool]:
        return 200, b"bye", True  # keep-alive by its headers, closed all the same

    async with serving(close_after) as server, _pool() as pool:
        url = f"http://127.0.0.1:{server.port}/"
        closed = server.closed
        assert await _call(pool, url) == b"bye"
        await closed.wait()
        assert await _call(pool, url) == b"bye"
    assert (server.connections, pool.opened) == (2, 2)


async def test_a_connection_with_bytes_past_its_answer_is_not_reused() -> None:
    junk = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"
    async with serving(raw=junk, linger=True) as server, _pool() as pool:
        url = f"http://127.0.0.1:{server.port}/"
        assert await _call(pool, url) == b"ok"
        assert await _call(pool, url) == b"ok"  # not the junk, on a new connection
    assert (server.connections, pool.opened) == (2, 2)


async def test_an_answer_not_read_whole_closes_its_connection() -> None:
    async with serving() as server, _pool() as pool:
        url = f"http://127.0.0.1:{server.port}/"
        request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": TIMEOUTS})
        response = await pool.handle_async_request(request)
        await response.aclose()
        assert pool.open == 0
        await _call(pool, url)
    assert pool.opened == 2


async def test_idle_connections_are_closed_after_the_keepalive() -> None:
    async with serving() as server, _pool(keepalive_seconds=0.2) as pool:
        url = f"http://127.0.0.1:{server.port}/"
        await _call(pool, url)
        await trio.sleep(0.3)
        await _call(pool, url)  # prunes the first, idle past 0.2 s, and opens another
        assert (pool.opened, pool.open) == (2, 1)


async def test_past_the_limit_a_call_waits_for_a_connection_up_to_its_pool_timeout() -> None:
    async with serving() as server, _pool(max_connections=1) as pool:
        url = f"http://127.0.0.1:{server.port}/"
        request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": TIMEOUTS})
        holding = await pool.handle_async_request(request)
        with pytest.raises(httpx.PoolTimeout):
            await _call(pool, url, pool=0.1)
        await holding.aread()
        await holding.aclose()
        await _call(pool, url, pool=0.1)
    assert pool.opened == 1


async def test_a_cancelled_call_leaves_no_connection_behind() -> None:
    async def never(target: str) -> tuple[int, bytes, bool]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with serving(never) as server, _pool() as pool:
        with trio.move_on_after(0.2):
            await _call(pool, f"http://127.0.0.1:{server.port}/")
        assert (pool.opened, pool.open) == (1, 0)


async def test_failures_are_httpx_exceptions() -> None:
    async def never(target: str) -> tuple[int, bytes, bool]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with serving(never) as server, _pool() as pool:
        with pytest.raises(httpx.ReadTimeout):
            await _call(pool, f"http://127.0.0.1:{server.port}/", read=0.1)
    async with serving(raw=b"NOT HTTP\r\n\r\n") as server, _pool() as pool:
        with pytest.raises(httpx.RemoteProtocolError):
            await _call(pool, f"http://127.0.0.1:{server.port}/")
    early = b"HTTP/1.1 100 Continue\r\n\r\n" * 2 + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    async with serving(raw=early, linger=True) as server, _pool() as pool:
        assert await _call(pool, f"http://127.0.0.1:{server.port}/") == b"ok"
    huge_head = b"HTTP/1.1 200 OK\r\n" + b"x-pad: a\r\n" * (MAX_HEAD_BYTES // 5)  # no end
    async with serving(raw=huge_head, linger=True) as server, _pool() as pool:
        with pytest.raises(httpx.RemoteProtocolError):
            await _call(pool, f"http://127.0.0.1:{server.port}/")
        assert pool.open == 0
    endless = b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INFORMATIONAL + 1)
    async with serving(raw=endless, linger=True) as server, _pool() as pool:
        with pytest.raises(httpx.RemoteProtocolError, match="informational"):
            await _call(pool, f"http://127.0.0.1:{server.port}/")
    async with serving(raw=b"") as server, _pool() as pool:
        with pytest.raises(httpx.RemoteProtocolError):
            await _call(pool, f"http://127.0.0.1:{server.port}/")
    async with serving() as server, _pool() as pool:
        with pytest.raises(httpx.UnsupportedProtocol):
            await _call(pool, f"ftp://127.0.0.1:{server.port}/")
        bad = httpx.Request("POST", f"http://127.0.0.1:{server.port}/", headers={"x": "a\nb"})
        with pytest.raises(httpx.LocalProtocolError):
            await pool.handle_async_request(bad)
        assert pool.open == 0


async def test_https_verifies_the_trainers_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with serving(ssl_context=server_context) as server:
        url = f"https://localhost:{server.port}/"
        async with _pool(ssl_context=trusting) as pool:
            assert await _call(pool, url) == b'{"ok":true}'
            assert await _call(pool, url) == b'{"ok":true}'
            assert pool.opened == 1
        async with _pool() as pool:  # the system's CAs do not know this one
            with pytest.raises(httpx.ConnectError, match="TLS"):
                await _call(pool, url)
            assert pool.open == 0


async def test_idle_connections_are_closed_when_no_request_comes() -> None:
    async with serving() as server, _pool(keepalive_seconds=0.2) as pool:
        await _call(pool, f"http://127.0.0.1:{server.port}/")
        assert pool.open == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.prune_forever)
            with trio.fail_after(5):
                await server.closed.wait()  # the trainer saw the idle connection close
            nursery.cancel_scope.cancel()
        assert (pool.opened, pool.open) == (1, 0)
