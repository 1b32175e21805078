"""Serving an agent with Hypercorn's Trio worker, with a graceful drain on SIGTERM/SIGINT.

Shutdown order (see docs/ARCHITECTURE.md, "Shutdown", for why each step is where it is):

1. SIGTERM or SIGINT arrives (the receiver is opened *before* the server listens, so an
   early signal is never lost to the default handler, which would exit 143 with no drain);
   a second one ends the drain at once (:meth:`~rollout.supervisor.Supervisor.hurry`);
2. the supervisor drains while Hypercorn still serves: ``/health`` says "draining" and new
   inits get ``503``; unfinished rollouts get ``drain_timeout`` seconds, then are cancelled
   and their "shutdown" results delivered;
3. Hypercorn stops listening and runs the app's ``after_serving``, which closes the shared
   HTTP client last.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import hypercorn.config
import hypercorn.trio
import trio

from .._store import open_store
from ..agent import Agent
from ..config import ServerConfig
from ..errors import EngineFailure
from .app import create_app, supervisor_of
from .supervisor import Supervisor

__all__ = ["check_store", "serve"]

log = logging.getLogger("rollout.serve")


async def serve(
    agent: Agent,
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    listen_fd: int | None = None,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``agent`` on ``host:port`` until ``shutdown_trigger`` returns (default: the
    first SIGTERM or SIGINT), then drain and return.

    ``listen_fd``: serve on this inherited listening socket instead of binding
    ``host:port`` (a worker of ``rollout serve --workers``, :mod:`rollout._cli.workers`).
    Such a worker stops accepting connections as soon as its drain starts (the other
    workers on the port take them), and also drains when its parent process is gone.

    Reports the bound port (an int; useful with ``port=0``) through ``task_status`` once the
    server listens and the supervisor runs, so ``port = await nursery.start(serve, ...)``.

    Raises :class:`~rollout._store.StoreError` before listening when the store cannot be
    used (an unknown URL, an unreachable Redis, a SQLite file open to other users), and
    :class:`~rollout.errors.EngineFailure` after stopping when the rollout engine itself
    failed (a bug), so the process exits non-zero instead of answering ``503`` forever.
    """
    await check_store(config)
    app = create_app(agent, config)
    hconfig = hypercorn.config.Config()
    if listen_fd is not None:
        hconfig.bind = [f"fd://{listen_fd}"]
    else:
        hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconfig.accesslog = None
    # Through the logging tree (one line per message, the caller's format and level).
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.graceful_timeout = config.graceful_timeout
    # after_serving drains again when Hypercorn is stopped some other way: let it finish.
    hconfig.shutdown_timeout = config.shutdown_budget

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def next_signal() -> None:
            async for _ in signals:
                return

        async def drain_then_stop() -> None:
            supervisor = supervisor_of(app)
            async with trio.open_nursery() as nursery:

                async def stop_when(event: Callable[[], Awaitable[object]]) -> None:
                    await event()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_when, shutdown_trigger or next_signal)
                nursery.start_soon(stop_when, supervisor.failed.wait)
                if listen_fd is not None:
                    nursery.start_soon(stop_when, _parent_gone)
            if supervisor.failed.is_set():
                log.critical("the rollout engine stopped: shutting down")
                return
            if listen_fd is not None:
                # A worker on a shared port stops accepting at once, so that new connections
                # go to the other workers, and drains meanwhile (after_serving waits for it).
                outer.start_soon(drain, supervisor)
                return
            await drain(supervisor)

        async def drain(supervisor: Supervisor) -> None:
            async with trio.open_nursery() as nursery:
                if shutdown_trigger is None:
                    nursery.start_soon(hurry_on_second_signal, supervisor)
                await supervisor.drain()
                nursery.cancel_scope.cancel()

        async def hurry_on_second_signal(supervisor: Supervisor) -> None:
            await next_signal()
            log.warning("second signal: stopping now, without waiting for the drain")
            supervisor.hurry()

        async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn.trio.serve(
                app, hconfig, shutdown_trigger=drain_then_stop, task_status=task_status
            )
            outer.cancel_scope.cancel()  # a second-signal watcher may still wait

        async with trio.open_nursery() as outer:
            binds = await outer.start(serve_then_stop)
            task_status.started(_port(binds[0]))
    supervisor = supervisor_of(app)
    if supervisor.failed.is_set():
        raise EngineFailure(f"the rollout engine stopped: {_describe(supervisor.failure)}")


async def check_store(config: ServerConfig) -> None:
    """Connect to ``config.store`` once; raises :class:`~rollout._store.StoreError` with one
    clear line (an unknown URL, an unreachable Redis, a SQLite file open to others)."""
    async with open_store(config.store).connected():
        pass


async def _parent_gone() -> None:
    """Return once this worker's parent process has exited (its pid changed)."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing signals a parent's death
        await trio.sleep(1.0)
    log.warning("the parent process is gone: draining")


def _port(bind: str) -> int:
    port = urlsplit(bind).port
    if port is None:
        raise RuntimeError(f"Hypercorn reported a bind without a port: {bind}")
    return port


def _describe(exc: BaseException | None) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return "unknown" if exc is None else f"{type(exc).__name__}: {exc}"
