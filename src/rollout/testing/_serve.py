"""Serving the mock trainer with Hypercorn's Trio worker."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from urllib.parse import urlsplit

import hypercorn.config
import hypercorn.trio
import trio

from ._app import MockTrainer

__all__ = ["serve"]


async def serve(
    trainer: MockTrainer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``trainer`` on ``host:port`` until cancelled or ``shutdown_trigger`` returns.

    Reports the bound port (an int, useful with ``port=0``) once listening:
    ``port = await nursery.start(serve, trainer, "127.0.0.1", 0)``.
    """
    config = hypercorn.config.Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    # Through the logging tree (one line per message, the caller's format and level).
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn.trio.serve, trainer.app, config, shutdown_trigger=shutdown_trigger)
        )
        bound = urlsplit(binds[0]).port
        assert bound is not None
        task_status.started(bound)
