"""A trainer that answers each rollout as its ``rollout_id`` asks: a healthy final answer,
or one poisoned answer (broken encoding, NaN, a lone surrogate, a huge body, ...).

A plain ASGI app, so every header and byte is under the test's control; served by Hypercorn
on 127.0.0.1:0. ``rollout_id`` ``"<kind>/<anything>"`` gets the poison ``kind`` of
:data:`CHAT_POISONS` on chat requests and :data:`COMPLETED_POISONS` on its result; any
other id gets a one-turn final answer and a plain ``200`` acknowledgement.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import hypercorn.config
import hypercorn.trio
import trio

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

FINAL = {
    "id": "c-1",
    "object": "chat.completion",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
_JSON: Headers = [(b"content-type", b"application/json")]


def _final_with(content: str) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    return json.dumps({**FINAL, "choices": [choice]}).encode()


#: Chat answers that must end their rollout (ERROR, or COMPLETED when harmless), never more.
CHAT_POISONS: dict[str, tuple[int, Headers, bytes]] = {
    "broken-gzip": (200, [*_JSON, (b"content-encoding", b"gzip")], b"this is not gzip" * 10),
    "nan": (200, _JSON, _final_with("x").replace(b'"x"', b"NaN")),
    "infinity": (
        200,
        _JSON,
        b'{"choices": [{"message": {"role": "assistant", "content": 1e999}}]}',
    ),
    "surrogate": (200, _JSON, _final_with("\\ud800").replace(b"\\\\ud800", b"\\ud800")),
    "duplicate-keys": (200, _JSON, b'{"choices": [], "choices": []}'),
    "deep": (200, _JSON, b"[" * 5000 + b"]" * 5000),
    "not-json": (200, _JSON, b"\xff\xfe not json"),
    "big-int": (200, _JSON, b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}"),
    "html-error": (500, [(b"content-type", b"text/html")], b"<h1>\x00\x1b[31m oops</h1>" * 50),
    "broken-gzip-error": (503, [(b"content-encoding", b"gzip")], b"not gzip either"),
    "huge": (200, _JSON, b""),  # streamed: see HUGE_BYTES
    # 32 KiB on the wire, 32 MiB inflated: decoded a bounded piece at a time, never whole.
    "gzip-bomb": (200, [*_JSON, (b"content-encoding", b"gzip")], gzip.compress(bytes(1 << 25))),
    "unasked-encoding": (200, [*_JSON, (b"content-encoding", b"br")], b"\x1b\x00 brotli?"),
}
#: Acknowledgements of a result that are still acknowledgements (any 2xx).
COMPLETED_POISONS: dict[str, tuple[int, Headers, bytes]] = {
    "ack-broken-gzip": (200, [*_JSON, (b"content-encoding", b"gzip")], b"not gzip at all"),
    "ack-deflate": (204, [(b"content-encoding", b"deflate")], b""),
}
#: Size of the "huge" answer, streamed in chunks without ever being held whole.
HUGE_BYTES = 300 * 1024 * 1024


@attrs.define(eq=False)
class PoisonTrainer:
    """Records every result body (parsed, or raw bytes if not JSON) by ``rollout_id``."""

    results: dict[str, list[Any]] = attrs.field(factory=dict)
    chat_requests: list[str] = attrs.field(factory=list)
    huge_sent: int = 0
    url: str = ""
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def wait_result(self, rollout_id: str, timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while rollout_id not in self.results:
                await self._changed.wait()
        return self.results[rollout_id][0]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = json.loads(body)
        rollout_id = str(data.get("rollout_id", ""))
        kind = rollout_id.partition("/")[0]
        if scope["path"].endswith("/v1/rollout/completed"):
            self.results.setdefault(rollout_id, []).append(data)
            self._changed.set()
            self._changed = trio.Event()
            status, headers, payload = COMPLETED_POISONS.get(kind, (200, _JSON, b'{"ok":true}'))
        else:
            self.chat_requests.append(rollout_id)
            status, headers, payload = CHAT_POISONS.get(
                kind, (200, _JSON, json.dumps(FINAL).encode())
            )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if kind == "huge" and not scope["path"].endswith("/completed"):
            await self._stream_huge(send)
            return
        await send({"type": "http.response.body", "body": payload})

    async def _stream_huge(self, send: Send) -> None:
        prefix = b'{"choices": [{"message": {"role": "assistant", "content": "'
        chunk = b"x" * 1024 * 1024
        try:
            await send({"type": "http.response.body", "body": prefix, "more_body": True})
            while self.huge_sent < HUGE_BYTES:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.huge_sent += len(chunk)
            await send({"type": "http.response.body", "body": b'"}}]}'})
        except Exception:  # the server hung up: what it should do
            return


@asynccontextmanager
async def serving_poison_trainer() -> AsyncIterator[PoisonTrainer]:
    """A :class:`PoisonTrainer` served on 127.0.0.1:0 for the duration of the block."""
    trainer = PoisonTrainer()
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn.trio.serve, trainer, config)
        trainer.url = binds[0]
        yield trainer
        nursery.cancel_scope.cancel()
