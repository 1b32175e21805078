"""CPU per request of the ways to call a trainer, measured the same way (docs/PERFORMANCE.md).

A lean h11 trainer answers a fixed chat completion in another process (pinned to core 1
where there are two cores); this process (core 0) sends ``--requests`` POSTs,
``--concurrency`` at a time, through each client, after a warm-up, and prints the CPU time
it spent per request (microseconds) and the requests per second:

- httpx ``AsyncClient.post`` over the sharded pools, at pool sizes 16, 8 and 4;
- httpx's transport called directly, without a client (what ``TrainerClient`` does), at
  pool sizes 4 and 1;
- our ``TrainerClient.chat`` on it (retries, strict JSON, size cap, events);
- httpcore alone over the same sharded pools;
- httpx with one pool and no limits;
- a minimal keep-alive h11 client (``benchmarks/_h11_trainer.ClientPool``): the floor.

    uv run python benchmarks/http_clients.py --requests 4000 --concurrency 64
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
import httpcore
import httpx
import trio

sys.path.insert(0, str(Path(__file__).parent))
from _h11_trainer import ClientPool

from rollout._trainer import pool as pools
from rollout._trainer.client import TrainerClient
from rollout._trainer.policy import TrainerPolicy
from rollout._trainer.transport import policed_transport
from rollout.config import ServerConfig

_ANSWER = (
    b'{"choices":[{"message":{"role":"assistant","content":"The answer is 42."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,'
    b'"total_tokens":15}}'
)
_SERVER = f"""
import sys, trio
sys.path.insert(0, {str(Path(__file__).parent)!r})
from _h11_trainer import serve_http
async def handler(method, target, body):
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


def _plain_pool(size: int) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(max_connections=size, max_keepalive_connections=size)


def _core_sender(pool: pools.ShardedPool, url: str) -> Callable[[], Awaitable[object]]:
    content = json.dumps(_BODY).encode()
    headers = [(b"host", httpx.URL(url).netloc), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(content)).encode()))

    async def send() -> None:
        response = await pool.handle_async_request(
            httpcore.Request("POST", url, headers=headers, content=content)
        )
        try:
            b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        finally:
            await response.aclose()

    return send


def _chatter(trainer: TrainerClient, base: str) -> Callable[[], Awaitable[object]]:
    async def chat() -> None:
        await trainer.chat(base, _BODY, api_key="key")  # type: ignore[arg-type]

    return chat


async def run(count: int, concurrency: int) -> list[tuple[str, float, float]]:
    server = await trio.lowlevel.open_process(
        [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE
    )
    assert server.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        line += await server.stdout.receive_some(64)
    port = int(line)
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(server.pid, {1})
        os.sched_setaffinity(0, {0})
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/chat/completions"
    rows: list[tuple[str, float, float]] = []

    async def both(name: str, one: Callable[[], Awaitable[object]]) -> None:
        await _measure(min(count, 500), concurrency, one)  # warm-up: connections, caches
        rows.append((name, *await _measure(count, concurrency, one)))

    default_size = pools.SHARD_SIZE
    try:
        policy = TrainerPolicy.from_entries(())
        config = ServerConfig()
        for size in (16, 8, 4):
            pools.SHARD_SIZE = size  # read when the sharded pool is made
            async with httpx.AsyncClient(transport=policed_transport(policy)) as http:
                await both(f"httpx AsyncClient, pools of {size}", _poster(http, url))
        for size in (4, 1):
            pools.SHARD_SIZE = size
            async with policed_transport(policy) as transport:
                name = f"httpx transport, no client, pools of {size}"
                await both(name, _sender(transport, url))
                if size == default_size:
                    trainer = TrainerClient(
                        transport, chat=config.chat_retry, delivery=config.delivery_retry
                    )
                    await both("TrainerClient.chat (on that transport)", _chatter(trainer, base))
        async with pools.ShardedPool(_plain_pool) as sharded:
            await both("httpcore, no httpx, pools of 1", _core_sender(sharded, url))
        pools.SHARD_SIZE = default_size
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits) as http:
            await both("httpx AsyncClient, one pool, no limits", _poster(http, url))
        minimal = ClientPool("127.0.0.1", port, concurrency)
        content = json.dumps(_BODY).encode()

        async def raw() -> None:
            await minimal.post("/v1/chat/completions", content)

        await both("minimal h11 client", raw)
        await minimal.aclose()
    finally:
        server.kill()
        await server.wait()
    return rows


@click.command()
@click.option("--requests", "count", type=click.IntRange(100), default=4000, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 1024), default=64, show_default=True)
def main(count: int, concurrency: int) -> None:
    """Client CPU per trainer request, for each way to send it (127.0.0.1 only)."""
    for name, micros, rate in trio.run(run, count, concurrency):
        print(f"{micros:8.0f} us CPU/request {rate:8.0f} requests/s  {name}")


if __name__ == "__main__":
    main()
