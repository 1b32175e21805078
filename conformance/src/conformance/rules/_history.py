"""What the rules read from an exchange: histories, results, tool schemas (no rule here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jsonschema

from ..exchange import Exchange
from ..trainer import WireEntry

STANDARD_PARAMS = frozenset({"temperature", "top_p", "max_tokens", "stop", "logprobs"})
METRIC_KEYS = (
    "total_latency_ms",
    "llm_latency_ms",
    "tool_latency_ms",
    "num_llm_calls",
    "num_tool_calls",
    "prompt_tokens",
    "response_tokens",
    "max_context_tokens",
)
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def parse_arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.dumps(json.loads(raw), sort_keys=True)
        except json.JSONDecodeError:
            return raw
    return json.dumps(raw, sort_keys=True)


def normalized(message: Any) -> Any:
    """A message reduced to what the protocol says must not change: role, content (None
    and "" alike), tool calls (ids, names, arguments as JSON), tool_call_id, name."""
    if not isinstance(message, dict):
        return ("not an object", json.dumps(message, sort_keys=True, default=str))
    content = message.get("content")
    if not isinstance(content, str | None):
        content = json.dumps(content, sort_keys=True)
    calls = tuple(
        (
            call.get("id"),
            (call.get("function") or {}).get("name"),
            parse_arguments((call.get("function") or {}).get("arguments")),
        )
        if isinstance(call, dict)
        else ("not an object",)
        for call in (message.get("tool_calls") or ())
    )
    return (message.get("role"), content or "", calls, message.get("tool_call_id"))


def divergence(messages: Sequence[Any], prefix: Sequence[Any]) -> str | None:
    """Why ``messages`` does not start with ``prefix`` (None when it does)."""
    for index, expected in enumerate(prefix):
        if index >= len(messages):
            return (
                f"history has {len(messages)} messages, the {len(prefix)} before it were "
                f"dropped from message {index} on"
            )
        if normalized(messages[index]) != normalized(expected):
            role = expected.get("role") if isinstance(expected, dict) else "?"
            return f"message {index} ({role}) was rewritten or replaced"
    return None


def messages_of(entry_body: Any, key: str = "messages") -> list[Any] | None:
    if isinstance(entry_body, dict) and isinstance(entry_body.get(key), list):
        return list(entry_body[key])
    return None


def expected_prefixes(ex: Exchange) -> tuple[list[tuple[int, WireEntry, list[Any]]], list[Any]]:
    """For each chat request, the history it must start with (docs/PROTOCOL.md §7.1), and
    the history ``final_messages`` must start with."""
    base: list[Any] = list(ex.case.messages)
    out = []
    for number, entry in enumerate(ex.chat, 1):
        out.append((number, entry, base))
        messages = messages_of(entry.body)
        if messages is None:
            continue
        answer = ex.answered_message(entry)
        base = [*messages, answer] if answer is not None else messages
    return out, base


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def result_bodies(ex: Exchange) -> list[dict[str, Any]]:
    return [entry.body for entry in ex.results if isinstance(entry.body, dict)]


def tool_schema_problems(tool: Any) -> list[str]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return [f"tool {json.dumps(tool)[:80]} is not {{'type': 'function', ...}}"]
    function = tool.get("function")
    if not isinstance(function, dict):
        return ["tool has no 'function' object"]
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        return [f"tool name {name!r} is not 1-64 characters of [a-zA-Z0-9_-]"]
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        return [f"tool {name}: 'parameters' is not a JSON Schema of type object"]
    try:
        # null-valued keywords (the reference's pydantic output has "enum": null) mean absent.
        jsonschema.Draft202012Validator.check_schema(drop_nulls(parameters))
    except jsonschema.SchemaError as exc:
        return [f"tool {name}: 'parameters' is not a valid JSON Schema: {exc.message}"]
    return []


def drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def tool_message_problems(messages: list[Any], start: int, *, final: bool) -> list[str]:
    problems: list[str] = []
    index = start
    while index < len(messages):
        message = messages[index]
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            problems.append(f"message {index}: a tool message that follows no assistant tool call")
            index += 1
            continue
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        index += 1
        if role != "assistant" or not calls:
            continue
        ids = [call.get("id") for call in calls if isinstance(call, dict)]
        answered = []
        while index < len(messages) and isinstance(messages[index], dict):
            reply = messages[index]
            if reply.get("role") != "tool":
                break
            if not isinstance(reply.get("content"), str):
                problems.append(f"message {index}: tool message content is not a string")
            answered.append(reply.get("tool_call_id"))
            index += 1
        at_end = index >= len(messages)
        for call_id in ids:
            count = answered.count(call_id)
            if count == 0 and not (final and at_end and not answered):
                problems.append(f"tool call {call_id!r} is not answered by a tool message")
            elif count > 1:
                problems.append(f"tool call {call_id!r} is answered {count} times")
        for call_id in answered:
            if call_id not in ids:
                problems.append(f"tool message answers {call_id!r}, which no call of it has")
    return problems
