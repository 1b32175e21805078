"""Fixtures: a mock trainer and rollout servers, each served by Hypercorn on 127.0.0.1:0."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import settings

from rollout import Agent, RetryPolicy, RolloutContext, ServerConfig, serve
from rollout.examples.calculator import agent as calculator_agent
from rollout.testing import MockTrainer
from rollout.testing import serve as serve_trainer

FIXTURES = Path(__file__).parent / "fixtures"

# Deterministic by default (the same examples on every run and machine); set
# HYPOTHESIS_PROFILE=explore to search with fresh random examples instead.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

#: Retries fast enough for tests, with the same shape as production.
FAST_CHAT_RETRY = RetryPolicy(
    attempts=4, request_timeout=30.0, wait_initial=0.01, wait_max=0.05, wait_jitter=0.01
)
FAST_DELIVERY_RETRY = RetryPolicy(
    attempts=None,
    timeout=30.0,
    request_timeout=30.0,
    wait_initial=0.01,
    wait_max=0.05,
    wait_jitter=0.01,
)


def fixture_json(name: str) -> Any:
    """A golden example from tests/fixtures (copied from the protocol's examples)."""
    return json.loads((FIXTURES / name).read_text())


def make_config(**overrides: Any) -> ServerConfig:
    """A ServerConfig with fast retries and a deadline that fails a stuck test quickly."""
    base = ServerConfig(
        rollout_timeout=60.0,
        drain_timeout=5.0,
        shutdown_delivery_timeout=5.0,
        graceful_timeout=0.1,
        chat_retry=FAST_CHAT_RETRY,
        delivery_retry=FAST_DELIVERY_RETRY,
    )
    return attrs.evolve(base, **overrides)


@attrs.define
class Trainer:
    """The mock trainer under test and its base URL."""

    mock: MockTrainer
    url: str


@attrs.define
class Server:
    """A running rollout server: its base URL, a client, and the trigger that drains it."""

    url: str
    client: httpx.AsyncClient
    stop: trio.Event
    stopped: trio.Event

    async def init(self, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return await self.client.post(f"{self.url}/v1/rollout/init", json=body, **kwargs)

    async def health(self) -> dict[str, Any]:
        response = await self.client.get(f"{self.url}/health")
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]

    async def shutdown(self) -> None:
        """Trigger the graceful drain and wait until the server stopped serving."""
        self.stop.set()
        await self.stopped.wait()


@asynccontextmanager
async def serving_trainer() -> AsyncIterator[Trainer]:
    """A mock trainer served on 127.0.0.1:0 for the duration of the block."""
    async with trio.open_nursery() as nursery:
        mock = MockTrainer()
        port = await nursery.start(serve_trainer, mock, "127.0.0.1", 0)
        yield Trainer(mock, f"http://127.0.0.1:{port}")
        nursery.cancel_scope.cancel()


StartServer = Callable[..., Awaitable[Server]]


@asynccontextmanager
async def server_starter() -> AsyncIterator[StartServer]:
    """``await start(agent=..., **config_overrides)`` serves a rollout server.

    When the block ends, every server still running is shut down gracefully (drained, its
    HTTP client closed), as in production, rather than cancelled.
    """
    servers: list[Server] = []
    async with httpx.AsyncClient(timeout=30.0) as client, trio.open_nursery() as nursery:

        async def start(agent: Agent = calculator_agent, **overrides: Any) -> Server:
            stop, stopped = trio.Event(), trio.Event()
            config = make_config(**overrides)

            async def run(task_status: trio.TaskStatus[int]) -> None:
                try:
                    await serve(
                        agent,
                        config,
                        host="127.0.0.1",
                        port=0,
                        shutdown_trigger=stop.wait,
                        task_status=task_status,
                    )
                finally:
                    stopped.set()

            port = await nursery.start(run)
            servers.append(Server(f"http://127.0.0.1:{port}", client, stop, stopped))
            return servers[-1]

        yield start
        with trio.fail_after(60):
            for server in servers:
                await server.shutdown()


@pytest.fixture
async def trainer() -> AsyncIterator[Trainer]:
    async with serving_trainer() as trainer:
        yield trainer


@pytest.fixture
async def start_server(trainer: Trainer) -> AsyncIterator[StartServer]:
    """See :func:`server_starter`. Depends on ``trainer`` because pytest-trio tears each
    fixture down as soon as its own users are done: the trainer must outlive the drain,
    which still delivers results to it."""
    async with server_starter() as start:
        yield start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


#: Bounds for tests of real processes; far above what they need on a loaded 2-core machine.
PROCESS_TIMEOUT = 60.0


@asynccontextmanager
async def server_process(
    *args: str, store: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[trio.Process, int]]:
    """Run ``python -m rollout serve`` on 127.0.0.1:0; yields the process and its port.

    Its store is ``store`` (default: SQLite in a fresh temporary directory, never the
    checkout's ./rollout-store.db); its lease lasts 1.5 s, so that a test sees a killed
    process's rollouts taken over soon. Its stderr is read until the "listening on" line
    and drained after that, so a chatty server never blocks on a full pipe. The process is
    killed if still running at the end.
    """
    command = [sys.executable, "-m", "rollout", "serve", "--host", "127.0.0.1", "--port", "0"]
    scratch = None if store is not None else tempfile.mkdtemp(prefix="rollout-store-")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "ROLLOUT_SERVER_STORE": store or f"sqlite:{scratch}/store.db",
        "ROLLOUT_SERVER_LEASE_TTL": "1.5",
        **(env or {}),
    }
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process, [*command, *args], stderr=subprocess.PIPE, check=False, env=env
            )
        )
        try:
            assert process.stderr is not None
            output = b""
            with trio.fail_after(PROCESS_TIMEOUT):
                while (
                    match := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", output)
                ) is None:
                    chunk = await process.stderr.receive_some()
                    assert chunk, f"server exited early: {output.decode(errors='replace')}"
                    output += chunk

            async def drain(stream: trio.abc.ReceiveStream) -> None:
                while await stream.receive_some():
                    pass

            nursery.start_soon(drain, process.stderr)
            yield process, int(match.group(1))
        finally:
            if process.returncode is None:
                process.kill()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real ``redis-server`` of this test's own, on a free loopback port, in ``tmp_path``;
    yields its URL and stops it. Skips (with how to get one) where there is no
    redis-server, except on CI (``CI`` set), where a missing one fails the test."""
    with running_redis(tmp_path) as url:
        yield url


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    """Start ``redis-server`` (no persistence, loopback only) in ``directory``; yields its
    URL. See :func:`redis_url`."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server not found (apt-get install redis-server, or brew install redis)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run the Redis tests")
        pytest.skip(reason)
    for _ in range(5):  # a free port may be taken between the probe and the bind: retry
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        command += ["--appendonly", "no", "--dir", str(directory), "--protected-mode", "yes"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.01)
        if process.poll() is None:
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                process.terminate()
                process.wait(timeout=PROCESS_TIMEOUT)
                if process.stdout is not None:
                    process.stdout.close()
            return
        if process.stdout is not None:
            process.stdout.close()
    pytest.fail("redis-server did not start on any of 5 free ports")


def store_rows(path: Path) -> list[dict[str, Any]]:
    """The rollouts of the SQLite store at ``path``, read directly (as an operator would),
    oldest first; ``result`` decoded when there is one."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(row) for row in db.execute("SELECT * FROM rollouts ORDER BY created_at")]
    for row in rows:
        if row["result"] is not None:
            row["result"] = json.loads(row["result"])
    return rows


async def rollout_cli(cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run ``python -m rollout ARGS`` in ``cwd`` to the end; its exit status, stdout and
    stderr."""
    with trio.fail_after(PROCESS_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "rollout", *args],
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def gated_agent(release: trio.Event) -> Agent:
    """An agent whose rollouts wait for ``release`` before their one chat turn."""

    async def waits(ctx: RolloutContext) -> None:
        await release.wait()
        await ctx.chat()

    return Agent("waits", loop=waits)


def init_body(
    trainer: Trainer, question: str = "What is 25 + 17?", **fields: Any
) -> dict[str, Any]:
    """An init request for the calculator, like tests/fixtures/01_init_request.json."""
    body: dict[str, Any] = {
        "rollout_id": fields.pop("rollout_id", "r-1"),
        "server_url": trainer.url,
        "messages": [
            {"role": "system", "content": "You are a calculator. Use the tools."},
            {"role": "user", "content": question},
        ],
        "completion_params": {"temperature": 0.7, "max_tokens": 64},
        "max_turns": 8,
        "max_tokens_total": 4096,
        "metadata": {},
    }
    body.update(fields)
    return body


async def run_to_result(
    server: Server, trainer: Trainer, body: dict[str, Any], result_timeout: float = 30.0
) -> dict[str, Any]:
    """POST the init, expect 202, and return the result the trainer received."""
    response = await server.init(body)
    assert response.status_code == 202, response.text
    return await trainer.mock.wait_result(body["rollout_id"], timeout=result_timeout)  # type: ignore[no-any-return]


__all__ = [
    "FIXTURES",
    "PROCESS_TIMEOUT",
    "Server",
    "StartServer",
    "Trainer",
    "fixture_json",
    "gated_agent",
    "init_body",
    "make_config",
    "rollout_cli",
    "run_to_result",
    "server_process",
    "server_starter",
    "serving_trainer",
]
