"""Serving an agent loop written for the reference SDK (Osmosis 0.2.x), unchanged.

Such a loop is an object with a ``name``, ``get_tools(request)`` and ``async run(ctx)``
that drives its own message list with ``ctx.chat(messages)``, executes tools itself, and
ends with ``return ctx.complete(messages, reward=...)`` or ``return ctx.error(message)``.
:func:`from_reference` wraps it in an :class:`~rollout.Agent`, so ``rollout serve -m
module:agent_loop`` (and ``validate``, ``test``, ``eval``, ``demo``) take it as it is; the
loader does this by itself for any object of that shape. docs/PORTING.md maps the two APIs.

The adapter keeps this server's guarantees: every message the loop adds goes through the
append-only history (a loop that rewrites an earlier message ends with an honest ``ERROR``),
budgets and the deadline still stop it from outside, and the result is built by the server.
Limits: ``get_tools`` is called once, when the agent is loaded (tools cannot differ per
rollout); per-call sampling arguments of ``ctx.chat(messages, **kwargs)`` are ignored (the
init's ``completion_params`` apply); ``finish_reason`` passed to ``ctx.complete`` is ignored
(the server reports why the loop ended).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._wire import codec
from ._wire.models import Message
from .agent import Agent, RolloutContext, Trajectory
from .errors import AgentError
from .tools import Tool

__all__ = ["ReferenceContext", "from_reference", "looks_like_reference_loop"]


def looks_like_reference_loop(target: Any) -> bool:
    """Whether ``target`` has the reference's agent loop shape (name, get_tools, async run)."""
    run = getattr(target, "run", None)
    return (
        isinstance(getattr(target, "name", None), str)
        and callable(getattr(target, "get_tools", None))
        and inspect.iscoroutinefunction(run)
    )


@attrs.frozen
class ReferenceRequest:
    """What a reference loop reads as ``ctx.request`` (plain JSON values)."""

    rollout_id: str
    messages: list[dict[str, Any]]
    completion_params: dict[str, Any]
    max_turns: int
    max_tokens_total: int
    metadata: dict[str, Any]
    tool_server_url: str | None = None


@attrs.frozen
class CompletionsResult:
    """What ``ctx.chat`` answers a reference loop: the assistant ``message`` (a dict), its
    ``tool_calls`` and ``finish_reason``."""

    message: dict[str, Any]
    finish_reason: str | None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return list(self.message.get("tool_calls") or [])

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.message.get("tool_calls"))


@attrs.frozen
class _Ending:
    """What ``ctx.complete`` / ``ctx.error`` return: the loop's last word."""

    messages: list[dict[str, Any]]
    reward: float | None = None
    error: str | None = None


class ReferenceContext:
    """The reference's ``RolloutContext``, backed by this server's
    :class:`~rollout.RolloutContext`."""

    def __init__(self, ctx: RolloutContext, tools: list[dict[str, Any]]) -> None:
        self._ctx = ctx
        self.tools = tools
        self.request = ReferenceRequest(
            rollout_id=ctx.rollout_id,
            messages=[codec.unstructure_message(m) for m in ctx.messages],
            completion_params=codec.unstructure(ctx._params),
            max_turns=ctx.max_turns,
            max_tokens_total=ctx.max_tokens_total,
            metadata=dict(ctx.metadata),
        )

    def _sync(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Append what the loop added to its list since the server's history; refuse a list
        that is not the history plus new messages (docs/PROTOCOL.md §7.1)."""
        known = [codec.unstructure_message(m) for m in self._ctx.messages]
        given = [dict(m) for m in messages]
        if given[: len(known)] != known:
            raise AgentError(
                "the loop's messages do not extend the history (an earlier message was"
                " changed or dropped): messages are append-only"
            )
        for message in given[len(known) :]:
            self._ctx.append(codec.structure(message, Message))

    async def chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> CompletionsResult:
        self._sync(messages)
        reply = await self._ctx.chat()
        return CompletionsResult(codec.unstructure_message(reply), self._ctx._last_finish_reason)

    def complete(
        self,
        final_messages: Sequence[Mapping[str, Any]],
        finish_reason: str = "stop",
        reward: float | None = None,
    ) -> _Ending:
        return _Ending([dict(m) for m in final_messages], reward=reward)

    def error(
        self, error_message: str, final_messages: Sequence[Mapping[str, Any]] | None = None
    ) -> _Ending:
        return _Ending([dict(m) for m in final_messages or []], error=error_message)

    def record_tool_call(self, latency_ms: float = 0.0) -> None:
        self._ctx._counters.tool_seconds += latency_ms / 1000

    def log_event(self, event_type: str, **data: Any) -> None:
        self._ctx.log_event(event_type, **data)


def from_reference(loop: Any) -> Agent:
    """An :class:`~rollout.Agent` running the reference-style ``loop``.

    Raises :class:`TypeError` when ``loop`` does not have that shape, and whatever its
    ``get_tools`` raises (called once, here).
    """
    if not looks_like_reference_loop(loop):
        raise TypeError(f"{loop!r} is not an agent loop (name, get_tools, async run)")
    schemas = [_schema(tool) for tool in loop.get_tools(None) or []]
    tools = [_advertised(schema) for schema in schemas]
    rewards: dict[str, float | None] = {}

    async def run(ctx: RolloutContext) -> None:
        reference = ReferenceContext(ctx, schemas)
        ending = await loop.run(reference)
        if not isinstance(ending, _Ending):
            raise AgentError(
                f"run() must return ctx.complete(...) or ctx.error(...), got {ending!r}"
            )
        if ending.messages:
            reference._sync(ending.messages)
        if ending.error is not None:
            raise AgentError(ending.error)
        rewards[ctx.rollout_id] = ending.reward

    def reward(trajectory: Trajectory) -> float | None:
        return rewards.pop(trajectory.rollout_id, None)

    return Agent(name=loop.name, tools=tools, loop=run, reward=reward)


def _schema(tool: Any) -> dict[str, Any]:
    """A tool schema as a dict (the reference's are pydantic models)."""
    dump = getattr(tool, "model_dump", None)
    value = dump(exclude_none=True) if callable(dump) else tool
    if not isinstance(value, Mapping):
        raise TypeError(f"get_tools() returned {tool!r}, not an OpenAI function tool")
    return dict(value)


def _advertised(schema: Mapping[str, Any]) -> Tool:
    """A :class:`~rollout.Tool` that only advertises ``schema``: the loop runs its tools."""
    function = schema.get("function") or {}
    name = str(function.get("name", ""))

    def not_here(**_: Any) -> str:
        raise AgentError(f"tool {name!r} is run by the agent loop, not by ctx.call_tools()")

    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return Tool(name, str(function.get("description") or ""), parameters, not_here)
