"""The trainer side of benchmarks/chaos.py: a :class:`rollout.testing.MockTrainer` that
injects faults, and a TCP proxy in front of it that resets connections.

- :class:`Injector` draws each trainer request's fault with a seeded generator: chat 500s,
  429s with ``Retry-After``, chat answers hanging for a while, and a window in which every
  ``/v1/rollout/completed`` answers 503; it counts what it drew.
- :class:`TimedResults` is the mock's ``results``: it notes when each result arrived and
  wakes whoever waits for one.
- :func:`proxy` resets a fraction of requests (``SO_LINGER`` 0), half before the trainer saw
  them and half after it answered.

A sibling module of chaos.py (benchmarks/ is not a package): chaos.py puts its own directory
on ``sys.path`` before importing it, so this works both as a script and when chaos.py is
loaded by path (tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from rollout.testing import Fault, MockTrainer, RecordedRequest

__all__ = ["DrawnFaults", "FaultRates", "Injector", "TimedResults", "proxy"]


class FaultRates(Protocol):
    """What :class:`Injector` reads of chaos.py's ``Options``: probabilities per request,
    times in seconds."""

    seed: int
    chat_500: float
    chat_429: float
    chat_hang: float
    hang: tuple[float, float]
    outage: tuple[float, float]


# ---------------------------------------------------------------------------- the trainer


class DrawnFaults(collections.deque[Fault]):
    """A fault queue that never runs dry: each ``popleft()`` (one per request, see
    rollout.testing._app) draws the request's fault from ``draw``."""

    def __init__(self, draw: Callable[[], Fault]) -> None:
        super().__init__()
        self._draw = draw

    def __bool__(self) -> bool:
        return True

    def popleft(self) -> Fault:
        return self._draw()


class TimedResults(dict[str, list[RecordedRequest]]):
    """``MockTrainer.results`` that notes when each result arrived (Unix time, seconds) and
    wakes whoever waits for it. The mock records a result with
    ``results.setdefault(rollout_id, []).append(request)``: one ``setdefault`` per result."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[str, list[float]] = {}
        self.waiting: dict[str, trio.Event] = {}

    def setdefault(self, key: str, default: list[RecordedRequest]) -> list[RecordedRequest]:
        self.arrivals.setdefault(key, []).append(time.time())
        if (event := self.waiting.pop(key, None)) is not None:
            event.set()  # the waiter runs after the append that follows this call
        return super().setdefault(key, default)

    async def wait(self, rollout_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for a result of ``rollout_id``; whether one came."""
        with trio.move_on_after(timeout):
            while rollout_id not in self:
                await self.waiting.setdefault(rollout_id, trio.Event()).wait()
        return rollout_id in self


class Injector:
    """Draws each trainer request's fault with a seeded generator and counts them."""

    def __init__(self, options: FaultRates, counts: collections.Counter[str]) -> None:
        self.options = options
        self.random = random.Random(options.seed * 7919 + 1)
        self.counts = counts
        self.t0: float | None = None  # trio.current_time() of the first init
        self.trainer: MockTrainer | None = None
        #: rollout_id -> what each of its chat requests got, in order.
        self.chats: dict[str, list[str]] = {}

    def chat(self) -> Fault:
        o, r = self.options, self.random.random()
        if r < o.chat_500:
            fault, kind = Fault(500), "500"
        elif r < o.chat_500 + o.chat_429:
            fault, kind = Fault(429, retry_after=0.2), "429"
        elif r < o.chat_500 + o.chat_429 + o.chat_hang:
            fault = Fault(200, delay=self.random.uniform(*o.hang))
            kind = f"hang {fault.delay:.1f} s"
        else:
            fault, kind = Fault(), "ok"
        self.counts["chat requests"] += 1
        if kind != "ok":
            self.counts[f"chat {kind.split()[0]}"] += 1
        # The mock appends the request to chat_requests just before it takes the fault.
        if self.trainer is not None and self.trainer.chat_requests:
            body = self.trainer.chat_requests[-1].body
            rollout_id = body.get("rollout_id") if isinstance(body, dict) else None
            self.chats.setdefault(str(rollout_id), []).append(kind)
        return fault

    def completed(self) -> Fault:
        start, end = self.options.outage
        if self.t0 is not None and start <= trio.current_time() - self.t0 < end:
            self.counts["completed 503"] += 1
            return Fault(503)
        return Fault()


# ---------------------------------------------------------------------------- the proxy

_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ")


async def _reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` abruptly: SO_LINGER 0 makes the kernel send RST, not FIN."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def proxy(
    upstream_port: int,
    reset_rate: float,
    seed: int,
    counts: collections.Counter[str],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A TCP proxy on 127.0.0.1:0 to 127.0.0.1:``upstream_port``; reports its port.

    Each HTTP request (a chunk from the client that starts with a method) is, with
    probability ``reset_rate``, answered with a connection reset: half of them at once (the
    trainer never sees the request), half once the trainer's answer comes back (it acted on
    the request, the client never learns). Runs until cancelled.
    """
    draw = random.Random(seed * 7919 + 2)

    async def handle(client: trio.SocketStream) -> None:
        counts["proxy connections"] += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
        except OSError:
            await _reset(client)
            return
        reset_on_answer = False
        async with upstream, client, trio.open_nursery() as pipes:

            async def requests() -> None:
                nonlocal reset_on_answer
                while data := await client.receive_some(65536):
                    if data.startswith(_METHODS) and draw.random() < reset_rate:
                        if draw.random() < 0.5:
                            counts["reset before trainer"] += 1
                            await _reset(client)
                            return
                        reset_on_answer = True
                    await upstream.send_all(data)
                await upstream.send_eof()
                await trio.sleep_forever()  # until the answers end

            async def answers() -> None:
                while data := await upstream.receive_some(65536):
                    if reset_on_answer:
                        counts["reset after trainer"] += 1
                        await _reset(client)
                        return
                    await client.send_all(data)

            async def pump(direction: Callable[[], Awaitable[None]]) -> None:
                with contextlib.suppress(
                    OSError, trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    await direction()
                pipes.cancel_scope.cancel()  # either direction ending ends the connection

            pipes.start_soon(pump, requests)
            pipes.start_soon(pump, answers)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)
