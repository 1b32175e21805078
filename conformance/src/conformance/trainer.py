"""The scripted, recording trainer the server under test calls back (docs/PROTOCOL.md §4 and §5).

A plain ASGI app served by Hypercorn's Trio worker. Every case gets its own base URL,
``{base}/c/{n}``, used as the init's ``server_url``; so callbacks are attributed to their
case by path, whatever the server puts in the body. For each case it answers
``POST .../v1/chat/completions`` from the case's script (faults first, then the turn) and
records ``POST .../v1/rollout/completed``; every request and answer goes to the wire log,
in the order the requests arrived.

A ``slow`` fault holds a chat answer back for ``Case.slow`` seconds. A client that gives up
meanwhile (closes the connection) gets nothing: its request is logged with status
:data:`ABANDONED` and no turn, and what it would have got is kept for the next request,
so a client that times out and retries loses nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, Literal

import attrs
import hypercorn.config
import hypercorn.trio
import trio

from .case import Case, FaultKind, Turn

__all__ = ["ABANDONED", "ScriptedTrainer", "WireEntry", "serve_trainer"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: The answer after the script ran out: the model stops.
FINAL_TURN = Turn(content="That is all.", completion_tokens=1)
#: The status logged for a request whose client closed the connection before its (slow)
#: answer was sent (nginx's "client closed request"); nothing was answered.
ABANDONED = 499

_FAULT_ANSWERS: dict[FaultKind, tuple[int, bytes, list[tuple[bytes, bytes]]]] = {
    "http_500": (500, b'{"error": {"message": "conformance: scripted 500"}}', []),
    "http_503": (
        503,
        b'{"error": {"message": "conformance: scripted 503"}}',
        [(b"retry-after", b"1")],
    ),
    "http_400": (400, b'{"error": {"message": "conformance: scripted 400"}}', []),
    "broken_body": (200, b'{"choices": [{"message": ', []),
}


@attrs.frozen
class WireEntry:
    """One callback as the trainer saw it, and what it answered.

    ``t`` is seconds since the trainer started; ``headers`` have lower-cased names;
    ``body`` is the parsed JSON (or the raw text when it was not JSON); ``turn`` is the
    index of the script turn answered (None when a fault was answered instead, or nothing:
    status :data:`ABANDONED`); ``slow`` is how many seconds the answer was held back.
    """

    t: float
    kind: Literal["chat", "result", "other"]
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    answer: Any
    turn: int | None = None
    fault: FaultKind | None = None
    slow: float = 0.0


@attrs.define(eq=False)
class _Script:
    case: Case
    answered: int = 0
    faults: deque[FaultKind] | None = None
    result_statuses: deque[int] = attrs.field(factory=deque)
    acknowledged: trio.Event = attrs.field(factory=trio.Event)
    wire: list[WireEntry] = attrs.field(factory=list)


@attrs.define(eq=False)
class ScriptedTrainer:
    """Scripts by case number, the wire log of each, and the ASGI app that serves them."""

    _scripts: dict[int, _Script] = attrs.field(factory=dict, init=False)
    _unrouted: list[WireEntry] = attrs.field(factory=list, init=False)
    _started: float = attrs.field(factory=trio.current_time, init=False)

    def register(self, case: Case) -> str:
        """Script ``case``; returns the path prefix (``/c/<n>``) for its ``server_url``."""
        number = len(self._scripts)
        self._scripts[number] = _Script(case, result_statuses=deque(case.result_statuses))
        return f"/c/{number}"

    def wire(self, prefix: str) -> list[WireEntry]:
        """Every callback received under ``prefix`` so far, in arrival order."""
        return list(self._script(prefix).wire)

    @property
    def unrouted(self) -> list[WireEntry]:
        """Requests to paths of no case (a server calling the wrong URL)."""
        return list(self._unrouted)

    async def wait_acknowledged(self, prefix: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until a result under ``prefix`` was answered 2xx; False after ``timeout`` s."""
        with trio.move_on_after(timeout):
            await self._script(prefix).acknowledged.wait()
            return True
        return False

    def _script(self, prefix: str) -> _Script:
        return self._scripts[int(prefix.rsplit("/", 1)[-1])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        answered = await self._answer(scope["method"], scope["path"], headers, raw, receive)
        if answered is None:
            return  # the client is gone
        status, answer, extra = answered
        payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, receive: Receive
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]] | None:
        body = _parse(raw)
        t = trio.current_time() - self._started
        parts = path.split("/", 3)  # "", "c", "<n>", "v1/..."
        number = int(parts[2]) if len(parts) == 4 and parts[1] == "c" and parts[2].isdigit() else -1
        script = self._scripts.get(number)
        endpoint = "/" + parts[3] if len(parts) == 4 else path
        kind: Literal["chat", "result", "other"] = (
            "chat"
            if endpoint == "/v1/chat/completions"
            else "result"
            if endpoint == "/v1/rollout/completed"
            else "other"
        )
        if script is None or kind == "other" or method != "POST":
            answer: Any = {
                "error": {"message": f"conformance trainer: no route for {method} {path}"}
            }
            entry = WireEntry(t, kind, path, headers, body, 404, answer)
            (script.wire if script is not None else self._unrouted).append(entry)
            return 404, answer, []
        if kind == "result":
            status = script.result_statuses.popleft() if script.result_statuses else 200
            answer = {"status": "ok"} if 200 <= status < 300 else {"error": "scripted failure"}
            script.wire.append(WireEntry(t, kind, path, headers, body, status, answer))
            if 200 <= status < 300:
                script.acknowledged.set()
            return status, answer, []
        return await self._chat(script, t, path, headers, body, receive)

    async def _chat(
        self,
        script: _Script,
        t: float,
        path: str,
        headers: dict[str, str],
        body: Any,
        receive: Receive,
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]] | None:
        # Logged where it arrived (a retry may be answered before a slow answer ends).
        position = len(script.wire)
        script.wire.append(WireEntry(t, "chat", path, headers, body, ABANDONED, "no answer yet"))
        held = 0.0
        while True:
            index = script.answered
            turn = script.case.turns[index] if index < len(script.case.turns) else FINAL_TURN
            if script.faults is None:
                script.faults = deque(turn.faults)
            if not script.faults or script.faults[0] != "slow":
                break
            script.faults.popleft()
            held += script.case.slow
            if await _client_gone(receive, script.case.slow):
                # Nothing was answered: the next request gets what this one would have.
                script.wire[position] = attrs.evolve(
                    script.wire[position],
                    answer="abandoned: the client closed the connection during a slow answer",
                    fault="slow",
                    slow=held,
                )
                return None
        if script.faults:
            fault = script.faults.popleft()
            status, answer, extra = _FAULT_ANSWERS[fault]
            script.wire[position] = WireEntry(
                t, "chat", path, headers, body, status, _parse(answer), fault=fault, slow=held
            )
            return status, answer, extra
        script.answered += 1
        script.faults = None
        if turn.delay:
            await trio.sleep(turn.delay)
        completion = _completion(script.case.rollout_id, index, turn, body)
        script.wire[position] = WireEntry(
            t, "chat", path, headers, body, 200, completion, turn=index, slow=held
        )
        return 200, completion, []


async def _client_gone(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; True as soon as the client closed the connection instead."""
    with trio.move_on_after(seconds):
        while (await receive())["type"] != "http.disconnect":
            pass
        return True
    return False


def assistant_message(index: int, turn: Turn) -> dict[str, Any]:
    """The assistant message answered for script turn ``index`` (OpenAI chat format)."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{index}_{k}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for k, call in enumerate(turn.tool_calls)
        ]
    elif turn.content is None:
        message["content"] = ""
    return message


def _completion(rollout_id: str, index: int, turn: Turn, request: Any) -> dict[str, Any]:
    messages = request.get("messages") if isinstance(request, dict) else None
    prompt_tokens = len(json.dumps(messages)) // 4 if messages else 0
    return {
        "id": f"chatcmpl-conformance-{index}",
        "object": "chat.completion",
        "created": 0,
        "model": "default",
        "choices": [
            {
                "index": 0,
                "message": assistant_message(index, turn),
                "finish_reason": "tool_calls" if turn.tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "total_tokens": prompt_tokens + turn.completion_tokens,
        },
    }


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw.decode("utf-8", "replace")


async def serve_trainer(
    trainer: ScriptedTrainer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``trainer`` until cancelled; reports the bound port once listening."""
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("conformance.trainer")
    config.graceful_timeout = 0.1
    config.keep_alive_timeout = math.inf
    async with trio.open_nursery() as nursery:
        app: Any = trainer  # a plain ASGI 3 callable; Hypercorn's stub wants its own types
        binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
