"""CPU per request, and memory per outstanding request, of the ways to call a trainer,
measured the same way (docs/PERFORMANCE.md).

A lean h11 trainer answers a fixed chat completion in another process (pinned to core 1
where there are two cores); this process (core 0) sends ``--requests`` POSTs,
``--concurrency`` at a time, through each client, after a warm-up, and prints the CPU time
it spent per request (microseconds) and the requests per second. Then it holds
``--held`` requests outstanding at once (the trainer answers after a few seconds) and prints
the memory each holds until its answer (tracemalloc, bytes) and the objects the garbage
collector tracks for it:

- httpx ``AsyncClient.post`` (one pool, no limits);
- httpx's transport called directly, without a client (httpcore's pool under it);
- httpcore's pool alone;
- for memory, instead of those three (httpcore's pool does work quadratic in its
  connections on every request: thousands held would take hours), one httpcore
  connection per request, without its pool;
- ``policed_transport``, the server's: our pool of h11 connections (rollout._trainer.pool);
- our ``TrainerClient.chat`` on it (retries, strict JSON, size cap, events);
- a minimal keep-alive h11 client (``benchmarks/_h11_trainer.ClientPool``): the floor.

    uv run python benchmarks/http_clients.py --requests 4000 --concurrency 64 --held 2000
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
import httpcore
import httpx
import trio

sys.path.insert(0, str(Path(__file__).parent))
from _h11_trainer import ClientPool

from rollout._trainer.client import TrainerClient
from rollout._trainer.policy import TrainerPolicy
from rollout._trainer.transport import policed_transport
from rollout.config import ServerConfig

_ANSWER = (
    b'{"choices":[{"message":{"role":"assistant","content":"The answer is 42."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,'
    b'"total_tokens":15}}'
)
#: Seconds the trainer holds each answer while memory per outstanding request is measured.
_HOLD_SECONDS = 6.0
_SERVER = f"""
import sys, trio
sys.path.insert(0, {str(Path(__file__).parent)!r})
from _h11_trainer import serve_http
async def handler(method, target, body):
    await trio.sleep(float(sys.argv[1]))
    return 200, {_ANSWER!r}
async def main():
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_http(handler, task_status))
        print(port, flush=True)
trio.run(main)
"""
_BODY: dict[str, object] = {
    "model": "default",
    "messages": [{"role": "user", "content": "What is 17 + 25?"}] * 3,
    "rollout_id": "bench",
}


async def _measure(
    count: int, concurrency: int, one: Callable[[], Awaitable[object]]
) -> tuple[float, float]:
    """(CPU microseconds per request in this process, requests per second)."""
    limiter = trio.Semaphore(concurrency)

    async def task() -> None:
        async with limiter:
            await one()

    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(task)
    return (time.process_time() - cpu) / count * 1e6, count / (time.perf_counter() - wall)


def _poster(http: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[object]]:
    content = json.dumps(_BODY).encode()
    headers = {"content-type": "application/json"}

    async def post() -> None:
        (await http.post(url, content=content, headers=headers)).read()

    return post


def _sender(transport: httpx.AsyncBaseTransport, url: str) -> Callable[[], Awaitable[object]]:
    content = json.dumps(_BODY).encode()
    headers = {"content-type": "application/json"}

    async def send() -> None:
        request = httpx.Request("POST", url, content=content, headers=headers)
        response = await transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()

    return send


def _core_sender(
    url: str, pool: httpcore.AsyncConnectionPool | None = None
) -> Callable[[], Awaitable[object]]:
    """httpcore without httpx: through ``pool``, or (None) one connection per request,
    without a pool."""
    content = json.dumps(_BODY).encode()
    origin = httpcore.Origin(b"http", b"127.0.0.1", httpx.URL(url).port or 80)
    headers = [(b"host", httpx.URL(url).netloc), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(content)).encode()))

    async def send() -> None:
        request = httpcore.Request("POST", url, headers=headers, content=content)
        async with contextlib.AsyncExitStack() as stack:
            if pool is None:
                connection = httpcore.AsyncHTTPConnection(origin)
                await stack.enter_async_context(connection)
                response = await connection.handle_async_request(request)
            else:
                response = await pool.handle_async_request(request)
            stack.push_async_callback(response.aclose)
            await response.aread()

    return send


def _chatter(trainer: TrainerClient, base: str) -> Callable[[], Awaitable[object]]:
    async def chat() -> None:
        await trainer.chat(base, _BODY, api_key="key")  # type: ignore[arg-type]

    return chat


async def _held(count: int, one: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(bytes, gc-tracked objects) per request while ``count`` are outstanding at once."""
    gc.collect()
    tracemalloc.start()
    memory, objects = tracemalloc.get_traced_memory()[0], len(gc.get_objects())
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
        await trio.sleep(_HOLD_SECONDS / 2)  # all sent, none answered
        gc.collect()
        memory = tracemalloc.get_traced_memory()[0] - memory
        objects = len(gc.get_objects()) - objects
    tracemalloc.stop()
    return memory / count, objects / count


async def _trainer(delay: float) -> tuple[trio.Process, int]:
    server = await trio.lowlevel.open_process(
        [sys.executable, "-c", _SERVER, str(delay)], stdout=subprocess.PIPE
    )
    assert server.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        line += await server.stdout.receive_some(64)
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(server.pid, {1})
        os.sched_setaffinity(0, {0})
    return server, int(line)


Rows = list[tuple[str, float, float]]


async def run(count: int, concurrency: int, held: int) -> tuple[Rows, Rows]:
    """Rows of (client, CPU microseconds per request, requests per second), and rows of
    (client, bytes held per outstanding request, objects per request)."""
    cpu = await _round(0.0, lambda one: _cpu_row(count, concurrency, one), concurrency)
    memory = await _round(_HOLD_SECONDS, lambda one: _held(held, one), held)
    return cpu, memory


async def _cpu_row(
    count: int, concurrency: int, one: Callable[[], Awaitable[object]]
) -> tuple[float, float]:
    await _measure(min(count, 500), concurrency, one)  # warm-up: connections, caches
    return await _measure(count, concurrency, one)


async def _round(
    delay: float,
    measure: Callable[[Callable[[], Awaitable[object]]], Awaitable[tuple[float, float]]],
    connections: int,
) -> Rows:
    """One row per client, measured by ``measure`` against a trainer answering after
    ``delay`` seconds."""
    server, port = await _trainer(delay)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/chat/completions"
    rows: Rows = []

    async def row(name: str, one: Callable[[], Awaitable[object]]) -> None:
        rows.append((name, *await measure(one)))

    try:
        if delay == 0:  # held by the thousand, httpcore's pool is quadratic: see the doc
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            async with httpx.AsyncClient(limits=limits, timeout=60.0) as http:
                await row("httpx AsyncClient", _poster(http, url))
            async with httpx.AsyncHTTPTransport(limits=limits) as transport:
                await row("httpx transport, no client", _sender(transport, url))
            async with httpcore.AsyncConnectionPool() as pool:
                await row("httpcore pool, no httpx", _core_sender(url, pool))
        else:
            await row("httpcore connection, no pool, no httpx", _core_sender(url))
        async with policed_transport(TrainerPolicy.from_entries(())) as ours:
            await row("policed_transport (h11 connections)", _sender(ours, url))
            config = ServerConfig()
            trainer = TrainerClient(ours, chat=config.chat_retry, delivery=config.delivery_retry)
            await row("TrainerClient.chat (on that transport)", _chatter(trainer, base))
        minimal = ClientPool("127.0.0.1", port, connections)
        content = json.dumps(_BODY).encode()

        async def raw() -> None:
            await minimal.post("/v1/chat/completions", content)

        await row("minimal h11 client", raw)
        await minimal.aclose()
    finally:
        server.kill()
        await server.wait()
    return rows


@click.command()
@click.option("--requests", "count", type=click.IntRange(100), default=4000, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option("--held", type=click.IntRange(10, 10_000), default=2000, show_default=True)
def main(count: int, concurrency: int, held: int) -> None:
    """Client CPU per trainer request, and memory per outstanding request, for each way to
    send it (127.0.0.1 only)."""
    cpu, memory = trio.run(run, count, concurrency, held)
    for name, micros, rate in cpu:
        print(f"{micros:8.0f} us CPU/request {rate:8.0f} requests/s  {name}")
    for name, size, objects in memory:
        print(f"{size:8.0f} B held/request {objects:6.1f} objects/request  {name}")


if __name__ == "__main__":
    main()
