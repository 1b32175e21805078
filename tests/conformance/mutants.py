"""Deliberately broken rollout servers: our server with one protocol rule broken.

Each mutant is the real server (Quart-Trio app, served by Hypercorn on 127.0.0.1:0) with
one fault spliced in at the wire: an HTTP transport under its trainer client that rewrites
outgoing callbacks, or an ASGI wrapper that rewrites incoming inits. Each names the
conformance rule that must catch it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import attrs
import httpx
import hypercorn.config
import hypercorn.trio
import trio

from rollout import ServerConfig, create_app
from rollout.examples.calculator import agent as calculator_agent

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
Rewrite = Callable[[dict[str, Any]], dict[str, Any] | None]


class RewritingTransport(httpx.AsyncBaseTransport):
    """Sends through a real transport after ``mutate(request)``, which may replace the
    request, return a fake response (the request is then never sent), or add requests."""

    def __init__(self, mutate: Callable[[httpx.Request, Any], Any]) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._mutate = mutate

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        outcome = await self._mutate(request, self._inner)
        if isinstance(outcome, httpx.Response):
            return outcome
        return await self._inner.handle_async_request(outcome)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _with_json(request: httpx.Request, body: Any) -> httpx.Request:
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    return httpx.Request(request.method, request.url, headers=headers, json=body)


def _is(request: httpx.Request, endpoint: str) -> bool:
    return request.url.path.endswith(endpoint)


# -- transports (callbacks to the trainer) ------------------------------------------------


async def truncate_history(request: httpx.Request, inner: Any) -> httpx.Request:
    """Drops the first message once the history is long (breaks append-only)."""
    if _is(request, "/v1/chat/completions"):
        body = json.loads(request.content)
        if len(body["messages"]) >= 3:
            return _with_json(request, {**body, "messages": body["messages"][1:]})
    return request


async def wrong_tool_call_id(request: httpx.Request, inner: Any) -> httpx.Request:
    """Answers tool calls under another id (breaks tool-messages)."""
    if _is(request, "/v1/chat/completions"):
        body = json.loads(request.content)
        messages = [
            {**m, "tool_call_id": m["tool_call_id"] + "-x"} if m.get("role") == "tool" else m
            for m in body["messages"]
        ]
        return _with_json(request, {**body, "messages": messages})
    return request


async def two_results(request: httpx.Request, inner: Any) -> httpx.Request:
    """Posts every result twice, the second with another reward (breaks exactly-one)."""
    if _is(request, "/v1/rollout/completed"):
        body = json.loads(request.content)
        await inner.handle_async_request(_with_json(request, body))
        return _with_json(request, {**body, "reward": (body.get("reward") or 0.0) + 1.0})
    return request


async def drop_auth(request: httpx.Request, inner: Any) -> httpx.Request:
    """Sends callbacks without their Authorization header (breaks callback-auth)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
    return httpx.Request(request.method, request.url, headers=headers, content=request.content)


@attrs.define
class SilentAfter500:
    """Never delivers the result of a rollout whose trainer once answered 500, while
    telling the server it did (breaks exactly-one-result)."""

    failed: set[str] = attrs.field(factory=set)

    async def __call__(self, request: httpx.Request, inner: Any) -> Any:
        body = json.loads(request.content)
        if _is(request, "/v1/chat/completions"):
            response = await inner.handle_async_request(request)
            if response.status_code >= 500:
                self.failed.add(body["rollout_id"])
            return response
        if _is(request, "/v1/rollout/completed") and body["rollout_id"] in self.failed:
            return httpx.Response(200, json={"status": "ok"}, request=request)
        return request


@attrs.define
class LateSecondResult:
    """Delivers every result; once one was acknowledged, posts a second one with another
    reward ``after`` seconds later (breaks exactly-one-result, seen only by a suite that
    keeps listening after the first result)."""

    after: float = 1.0

    async def __call__(self, request: httpx.Request, inner: Any) -> Any:
        if not _is(request, "/v1/rollout/completed"):
            return request
        body = json.loads(request.content)
        response = await inner.handle_async_request(_with_json(request, body))
        await response.aread()
        if not 200 <= response.status_code < 300:
            return response  # refused: the server retries as usual
        await trio.sleep(self.after)
        second = {**body, "reward": (body.get("reward") or 0.0) + 1.0}
        late = await inner.handle_async_request(_with_json(request, second))
        await late.aread()
        await late.aclose()
        return response


@attrs.define
class GiveUpWhenSlow:
    """A trainer client with a ``read_timeout`` (seconds) on chat answers that, once one
    timed out, retries but swallows that rollout's result, telling the server it was
    delivered (breaks exactly-one-result when the trainer answers slowly). With
    ``swallow=False`` it is a correct server whose client merely times out and retries."""

    read_timeout: float = 2.0
    swallow: bool = True
    gave_up: set[str] = attrs.field(factory=set)

    async def __call__(self, request: httpx.Request, inner: Any) -> Any:
        body = json.loads(request.content)
        if _is(request, "/v1/chat/completions"):
            timeout = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {**timeout, "read": self.read_timeout}
            try:
                response = await inner.handle_async_request(request)
            except httpx.ReadTimeout:
                if self.swallow:
                    self.gave_up.add(body["rollout_id"])
                raise
            return response
        if _is(request, "/v1/rollout/completed") and body["rollout_id"] in self.gave_up:
            return httpx.Response(200, json={"status": "ok"}, request=request)
        return request


def _swap_tool_contents(messages: list[Any]) -> list[Any]:
    """Each run of tool messages after an assistant message with two or more tool calls,
    with its contents rotated by one and its tool_call_ids left in place."""
    out = list(messages)
    index = 0
    while index < len(out):
        message = out[index]
        index += 1
        if message.get("role") != "assistant" or len(message.get("tool_calls") or ()) < 2:
            continue
        end = index
        while end < len(out) and out[end].get("role") == "tool":
            end += 1
        run = out[index:end]
        if len(run) >= 2:
            contents = [m.get("content") for m in run]
            rotated = contents[1:] + contents[:1]
            out[index:end] = [{**m, "content": c} for m, c in zip(run, rotated, strict=True)]
        index = end
    return out


async def swap_tool_results(request: httpx.Request, inner: Any) -> httpx.Request:
    """Attaches each tool result of a turn with several calls to another of its calls,
    ids kept in order (passes tool-messages, breaks tool-results-in-order)."""
    body = json.loads(request.content)
    if _is(request, "/v1/chat/completions"):
        return _with_json(request, {**body, "messages": _swap_tool_contents(body["messages"])})
    if _is(request, "/v1/rollout/completed") and isinstance(body.get("final_messages"), list):
        final = _swap_tool_contents(body["final_messages"])
        return _with_json(request, {**body, "final_messages": final})
    return request


# -- ASGI wrappers (inits from the trainer) -------------------------------------------------


def rewrite_init(app: ASGIApp, rewrite: Rewrite, *, on_bad_json: int | None = None) -> ASGIApp:
    """Wraps ``app`` so ``rewrite`` edits every init body (None: leave it unchanged);
    with ``on_bad_json``, a body that is not a JSON object is answered with that status."""

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/rollout/init":
            await app(scope, receive, send)
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            if on_bad_json is not None:
                await send({"type": "http.response.start", "status": on_bad_json, "headers": []})
                await send({"type": "http.response.body", "body": b"internal error"})
                return
        else:
            changed = rewrite(body)
            if changed is not None:
                raw = json.dumps(changed).encode()
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await app({**scope, "headers": headers}, replay, send)

    return wrapped


def ignore_idempotency(body: dict[str, Any]) -> dict[str, Any]:
    """A fresh rollout_id and idempotency key per init: duplicates run again (breaks
    idempotent-init). Both, since our server also refuses a reused rollout_id (409)."""
    fresh = uuid.uuid4().hex
    return {**body, "rollout_id": f"{body.get('rollout_id')}-{fresh[:8]}", "idempotency_key": fresh}


def exceed_max_turns(body: dict[str, Any]) -> dict[str, Any]:
    """Runs two turns more than asked (breaks max-turns)."""
    return {**body, "max_turns": body.get("max_turns", 10) + 2}


def keep(body: dict[str, Any]) -> None:
    return None


@attrs.frozen
class Mutant:
    """A broken server, the rule that must catch it, and words its violation must contain
    (so it is caught for the right reason). ``settings`` overrides the test's
    :class:`~conformance.RunSettings` (e.g. a settle or slow long enough to see it)."""

    name: str
    rule: str
    symptom: str
    transport: Callable[[httpx.Request, Any], Any] | None = None
    rewrite: Rewrite | None = None
    on_bad_json: int | None = None
    settings: dict[str, Any] = attrs.field(factory=dict)


MUTANTS = (
    Mutant("history truncated", "append-only", "was rewritten", transport=truncate_history),
    Mutant("wrong tool_call_id", "tool-messages", "which no call", transport=wrong_tool_call_id),
    Mutant(
        "two different results", "exactly-one-result", "different results", transport=two_results
    ),
    Mutant("idempotency ignored", "idempotent-init", "the rollout ran", rewrite=ignore_idempotency),
    Mutant("max_turns exceeded", "max-turns", "chat turns for max_turns", rewrite=exceed_max_turns),
    Mutant("auth header dropped", "callback-auth", "no Authorization header", transport=drop_auth),
    Mutant(
        "no result after a trainer 500",
        "exactly-one-result",
        "no result was delivered",
        transport=SilentAfter500(),
    ),
    Mutant(
        "500 on a bad body", "invalid-init-4xx", "expected a 4xx", rewrite=keep, on_bad_json=500
    ),
    Mutant(
        "a second different result 1 s later",
        "exactly-one-result",
        "different results",
        transport=LateSecondResult(after=1.0),
        settings={"settle": 2.0, "shrink_budget": 0.0},
    ),
    Mutant(
        "no result after a chat answer slower than 2 s",
        "exactly-one-result",
        "no result was delivered",
        transport=GiveUpWhenSlow(read_timeout=2.0),
        settings={"slow": 2.5, "result_timeout": 1.5, "shrink_budget": 0.0},
    ),
    Mutant(
        "tool results swapped between calls",
        "tool-results-in-order",
        "carries the result of call",
        transport=swap_tool_results,
    ),
)


async def serve_mutant(
    mutant: Mutant | None,
    config: ServerConfig,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve our calculator server with ``mutant`` spliced in (None: unbroken) on
    127.0.0.1:0 until ``stop`` is set, then shut down gracefully; reports the port."""
    transport = None
    if mutant is not None and mutant.transport is not None:
        transport = RewritingTransport(mutant.transport)
    app: Any = create_app(calculator_agent, config, transport=transport)
    if mutant is not None and mutant.rewrite is not None:
        app = rewrite_init(app, mutant.rewrite, on_bad_json=mutant.on_bad_json)
    hconfig = hypercorn.config.Config()
    hconfig.bind = ["127.0.0.1:0"]
    hconfig.accesslog = None
    hconfig.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn.trio.serve, app, hconfig, shutdown_trigger=stop.wait)
        )
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
