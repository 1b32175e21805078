"""The mock trainer: state, scripted faults, recording, and its Quart-Trio app.

Endpoints (the trainer side of docs/PROTOCOL.md §4 and §5):

- ``POST /v1/chat/completions`` (and ``/v1/completions``, where the synchronous
  variant sends the same body): answers with :func:`rollout.testing.respond`, shaped like
  the protocol's examples 04/06 (``usage``, ``token_ids``, ``logprobs``);
- ``POST /v1/rollout/completed``: records a result, answers ``{"status": "ok"}``;
- ``GET /v1/rollout/completed/<rollout_id>``: the first recorded result, or 404;
- ``GET /health``.

Faults are queued on the :class:`MockTrainer` and consumed one per request, in order.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import deque
from typing import Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio

from ._model import Behaviour, respond

__all__ = ["Fault", "MockTrainer", "RecordedRequest", "create_app"]

log = logging.getLogger("rollout.testing")


@attrs.frozen
class Fault:
    """One scripted answer: wait ``delay`` seconds, then answer ``status`` with ``body``
    (``None``: the normal answer when ``status`` is 200, an error JSON otherwise) and a
    ``Retry-After`` header of ``retry_after`` seconds when given."""

    status: int = 200
    delay: float = 0.0
    body: bytes | None = None
    retry_after: float | None = None


@attrs.frozen
class RecordedRequest:
    """A request as the trainer received it: ``headers`` with lower-cased names."""

    path: str
    headers: dict[str, str]
    body: Any


@attrs.define(eq=False)
class MockTrainer:
    """A simulated trainer: a scripted model, fault queues, and everything it received.

    - ``behaviour``: "calculator" (solve with tools) or "always_tools" (never answer).
    - ``completion_tokens``: fixed ``usage.completion_tokens`` per answer (None: counted).
    - ``chat_delay``: seconds added to every chat answer.
    - ``chat_faults`` / ``completed_faults``: consumed first-in first-out, one per request.
    - ``openai_compatible``: answer as an OpenAI-compatible server, not a trainer: a
      ``model`` is required, trainer-only fields (``rollout_id``) are refused with ``400``
      as OpenAI refuses unknown arguments, and answers carry no ``token_ids``/``logprobs``.
    - ``api_key``: when set, both callbacks need ``Authorization: Bearer <api_key>``
      (docs/PROTOCOL.md §7.5) and get ``401`` without it; requests are recorded either way.
    """

    behaviour: Behaviour = "calculator"
    completion_tokens: int | None = None
    chat_delay: float = 0.0
    openai_compatible: bool = False
    api_key: str | None = attrs.field(default=None, repr=False)
    chat_faults: deque[Fault] = attrs.field(factory=deque)
    completed_faults: deque[Fault] = attrs.field(factory=deque)
    chat_requests: list[RecordedRequest] = attrs.field(factory=list)
    results: dict[str, list[RecordedRequest]] = attrs.field(factory=dict)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _app: QuartTrio | None = attrs.field(default=None, init=False)

    @property
    def app(self) -> QuartTrio:
        """The Quart-Trio app serving this trainer (made once)."""
        if self._app is None:
            self._app = create_app(self)
        return self._app

    def chat_requests_for(self, rollout_id: str) -> list[RecordedRequest]:
        """The chat requests whose body names ``rollout_id``, in arrival order."""
        return [
            r
            for r in self.chat_requests
            if isinstance(r.body, dict) and r.body.get("rollout_id") == rollout_id
        ]

    async def wait_result(self, rollout_id: str, timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        """The first accepted result body for ``rollout_id``; raises :class:`TimeoutError`
        when none arrived within ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while rollout_id not in self.results:
                await self._next_change()
            return self.results[rollout_id][0].body
        raise TimeoutError(f"no result for {rollout_id!r} within {timeout:g} s")

    async def wait_chat_request(self, rollout_id: str, timeout: float = 30.0) -> RecordedRequest:  # noqa: ASYNC109
        """The first chat request of ``rollout_id``; raises :class:`TimeoutError` after
        ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while not (found := self.chat_requests_for(rollout_id)):
                await self._next_change()
            return found[0]
        raise TimeoutError(f"no chat request for {rollout_id!r} within {timeout:g} s")

    async def _next_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _token_count(messages: list[Any]) -> int:
    words = 0
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            words += len(content.split()) if isinstance(content, str) else 0
            for call in message.get("tool_calls") or []:
                words += len(str(call.get("function", {}).get("arguments", "")).split())
    return max(1, words)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


async def _apply(fault: Fault | None) -> Response | None:
    """Sleep the fault's delay; return the fault's own response, or None for the normal one."""
    if fault is None:
        return None
    if fault.delay:
        await trio.sleep(fault.delay)
    headers = {} if fault.retry_after is None else {"retry-after": f"{fault.retry_after:g}"}
    if fault.body is not None:
        return Response(
            fault.body, status=fault.status, headers=headers, content_type="application/json"
        )
    if fault.status != 200:
        return _json({"error": f"injected fault {fault.status}"}, fault.status, headers)
    return None


def _openai_refusal(body: dict[str, Any]) -> str | None:
    """What an OpenAI-compatible server says of a trainer's chat body, or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    if "rollout_id" in body:
        return "Unrecognized request argument supplied: rollout_id"
    return None


def create_app(trainer: MockTrainer) -> QuartTrio:
    """The Quart-Trio app of ``trainer``."""
    app = QuartTrio("rollout.testing")

    async def read_json() -> tuple[Any, Response | None]:
        raw = await request.get_data(cache=False)
        try:
            return json.loads(raw), None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, _json({"detail": f"body is not JSON: {exc}"}, 400)

    def record(body: Any) -> RecordedRequest:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return RecordedRequest(request.path, headers, body)

    def unauthorized() -> Response | None:
        if trainer.api_key is None:
            return None
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, f"Bearer {trainer.api_key}".encode()):
            return None
        return _json({"detail": "Invalid or missing API key"}, 401)

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")  # the synchronous variant sends the same chat body
    async def chat() -> Response:
        body, error = await read_json()
        if error is not None:
            return error
        trainer.chat_requests.append(record(body))
        trainer._notify()
        if (refused := unauthorized()) is not None:
            return refused
        fault = trainer.chat_faults.popleft() if trainer.chat_faults else None
        if trainer.chat_delay:
            await trio.sleep(trainer.chat_delay)
        if (faulted := await _apply(fault)) is not None:
            return faulted
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _json({"detail": "expected a chat completion request with messages"}, 422)
        if trainer.openai_compatible and (refusal := _openai_refusal(body)) is not None:
            return _json({"error": {"message": refusal, "type": "invalid_request_error"}}, 400)
        messages: list[Any] = body["messages"]
        tools = body.get("tools") if isinstance(body.get("tools"), list) else None
        reply = respond(messages, tools, trainer.behaviour)
        produced = _token_count([reply.message])
        completion = (
            trainer.completion_tokens if trainer.completion_tokens is not None else produced
        )
        prompt = _token_count(messages)
        rollout_id = body.get("rollout_id", "none")
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{rollout_id}-{turn}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "default"),
            "choices": [
                {"index": 0, "message": reply.message, "finish_reason": reply.finish_reason}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        if not trainer.openai_compatible:  # token data: a trainer's, not OpenAI's
            answer["token_ids"] = [(prompt + i) % 32000 for i in range(completion)]
            answer["logprobs"] = [-0.1 * (1 + i % 5) for i in range(completion)]
        return _json(answer)

    @app.post("/v1/rollout/completed")
    async def completed() -> Response:
        body, error = await read_json()
        if error is not None:
            return error
        if (refused := unauthorized()) is not None:
            return refused
        fault = trainer.completed_faults.popleft() if trainer.completed_faults else None
        if (faulted := await _apply(fault)) is not None:
            return faulted
        if not isinstance(body, dict) or not isinstance(body.get("rollout_id"), str):
            return _json({"detail": "expected a result with a rollout_id"}, 422)
        trainer.results.setdefault(body["rollout_id"], []).append(record(body))
        trainer._notify()
        log.info("result for %s: %s", body["rollout_id"], body.get("status"))
        return _json({"status": "ok"})

    @app.get("/v1/rollout/completed/<rollout_id>")
    async def get_result(rollout_id: str) -> Response:
        if rollout_id not in trainer.results:
            return _json({"detail": f"no result for {rollout_id!r}"}, 404)
        return _json(trainer.results[rollout_id][0].body)

    @app.get("/health")
    async def health() -> Response:
        return _json(
            {
                "status": "healthy",
                "chat_requests": len(trainer.chat_requests),
                "results": len(trainer.results),
            }
        )

    return app
