"""``rollout serve --workers N``: N worker processes on one port, sharing the store.

The parent binds the listening socket once and starts N copies of the same ``rollout serve``
command with ``--listen-fd`` naming that socket (inherited), so every worker accepts on it;
the store (SQLite or Redis) makes them one server: an init re-sent to another worker gets
the same ``202``, and the survivors take over the rollouts of a worker that dies. The parent:

- forwards SIGTERM and SIGINT to every worker (each drains; a second signal hurries them),
  and exits 0 once all exited 0 (1 otherwise);
- starts a new worker when one exits unexpectedly (killed, out of memory), at most
  ``_MAX_RESTARTS`` times per minute, then stops the others and exits 1;
- gives the workers one directory for prometheus-client's multiprocess mode, so that
  ``/metrics`` on any worker counts all of them (``PROMETHEUS_MULTIPROC_DIR``; one of the
  caller's is kept).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import trio

__all__ = ["serve_workers"]

log = logging.getLogger("rollout.workers")

#: Unexpected worker exits tolerated per minute before the whole server stops.
_MAX_RESTARTS = 10


def serve_workers(workers: int, host: str, port: int, arguments: list[str]) -> int:
    """Run ``workers`` processes of ``rollout serve ARGUMENTS`` on ``host:port`` until
    SIGTERM/SIGINT; returns the exit status (see the module docstring). Raises
    :class:`OSError` when the port cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=4096)
    listener.set_inheritable(True)
    metrics_dir, own_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR"), False
    if not metrics_dir:
        metrics_dir, own_dir = tempfile.mkdtemp(prefix="rollout-metrics-"), True
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "rollout", *arguments, "--listen-fd", str(listener.fileno())]
    try:
        bound = listener.getsockname()[1]
        log.info(
            "rollout server listening on http://%s:%d (%d worker processes)", host, bound, workers
        )
        return trio.run(_supervise, workers, command, env, listener.fileno(), metrics_dir)
    finally:
        listener.close()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


async def _supervise(
    workers: int, command: list[str], env: dict[str, str], fd: int, metrics_dir: str
) -> int:
    processes: dict[int, trio.Process] = {}
    stopping = False
    failed = False
    exits: list[float] = []

    async def worker(index: int) -> None:
        nonlocal failed
        while True:
            # A session of its own: a terminal's Ctrl-C reaches the parent only, which passes
            # it on once (twice would hurry the drain); a worker whose parent is gone drains.
            process = await trio.lowlevel.open_process(
                command, env=env, pass_fds=(fd,), start_new_session=True
            )
            processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            if stopping:  # the signal came while it was starting: pass it on now
                process.send_signal(signal.SIGTERM)
            code = await process.wait()
            _mark_dead(process.pid, metrics_dir)
            if stopping:
                # -SIGTERM/-SIGINT: our signal reached it before it could listen (a worker
                # opens its signal receiver before it listens), so it served nothing.
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    failed = True
                    log.error("worker %d (pid %d) exited with %d", index, process.pid, code)
                return
            now = time.monotonic()
            exits[:] = [t for t in exits if now - t < 60.0] + [now]
            if len(exits) > _MAX_RESTARTS:
                log.critical("workers keep exiting (%d in a minute); stopping", len(exits))
                failed = True
                stop(signal.SIGTERM)
                return
            if code == 0:  # it drained and stopped by itself (a signal sent to it alone)
                log.warning(
                    "worker %d (pid %d) exited with 0; starting a new one (it had drained"
                    " on a signal of its own)",
                    index,
                    process.pid,
                )
            else:
                log.error(
                    "worker %d (pid %d) exited with %d; starting a new one (the others take"
                    " over its rollouts when its lease ends)",
                    index,
                    process.pid,
                    code,
                )

    def stop(signum: int) -> None:
        nonlocal stopping
        stopping = True
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    async def forward(signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            log.info("signal %d: passing it to the workers", signum)
            stop(signum)

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward, signals)
            async with trio.open_nursery() as group:
                for index in range(workers):
                    group.start_soon(worker, index)
            nursery.cancel_scope.cancel()  # every worker returned
    return 1 if failed else 0


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Let prometheus-client drop the live gauges of a worker that exited."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
    except OSError:  # pragma: no cover - the directory went away
        pass
