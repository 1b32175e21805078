"""The strict rules: this project's stronger guarantees (marked [ours] in
docs/PROTOCOL.md); a third-party server may fail them and still conform."""

from __future__ import annotations

import json
from typing import Any

import attrs

from ..exchange import Exchange
from ._history import (
    STANDARD_PARAMS,
    divergence,
    expected_prefixes,
    messages_of,
    parse_arguments,
    result_bodies,
    unique,
)
from ._registry import rule


@attrs.frozen
class _ToolTurn:
    """An assistant message with tool calls, and the tool messages right after it."""

    position: int
    #: (id, name, arguments as canonical JSON) per call, in the order made.
    calls: tuple[tuple[Any, Any, Any], ...]
    #: (tool_call_id, content) per tool message, in the order sent.
    replies: tuple[tuple[Any, str], ...]


def _hashable(value: Any) -> Any:
    """``value`` itself when it can key a dict (ids and names normally are), else its JSON."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _tool_call_key(call: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(id, name, arguments as canonical JSON) of one tool call."""
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    return (
        _hashable(call.get("id")),
        _hashable(function.get("name")),
        parse_arguments(function.get("arguments")),
    )


def _tool_turns(messages: list[Any], start: int) -> list[_ToolTurn]:
    turns = []
    for index in range(start, len(messages)):
        message = messages[index]
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        raw = message.get("tool_calls")
        calls = tuple(
            _tool_call_key(call)
            for call in (raw if isinstance(raw, list) else ())
            if isinstance(call, dict)
        )
        if not calls:
            continue
        replies = []
        for reply in messages[index + 1 :]:
            if not isinstance(reply, dict) or reply.get("role") != "tool":
                break
            content = reply.get("content")
            text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
            replies.append((_hashable(reply.get("tool_call_id")), text))
        turns.append(_ToolTurn(index, calls, tuple(replies)))
    return turns


def _order_problems(turn: _ToolTurn) -> list[str]:
    ids = [call_id for call_id, _, _ in turn.calls]
    answered = list(dict.fromkeys(call_id for call_id, _ in turn.replies if call_id in ids))
    made = [call_id for call_id in ids if call_id in answered]
    if answered == made:
        return []
    return [
        f"message {turn.position}: its tool messages answer the calls in the order "
        f"{answered}, the calls were made in the order {made}"
    ]


def _swap_problems(turns: list[_ToolTurn]) -> list[str]:
    """Tool messages that carry another call's result. A call's result is known only when
    the same call (name and arguments) was made alone, in a turn of its own, both before
    and after, and got the same content every time; nothing is assumed of the tools."""
    alone: dict[tuple[Any, Any], list[tuple[int, str]]] = {}
    for turn in turns:
        if len(turn.calls) == 1 and len(turn.replies) == 1:
            (call_id, name, arguments), (answered, content) = turn.calls[0], turn.replies[0]
            if answered == call_id:
                alone.setdefault((name, arguments), []).append((turn.position, content))
    problems: list[str] = []
    for turn in turns:
        if len(turn.calls) < 2:
            continue
        known: dict[Any, str] = {}  # call id -> its result
        for call_id, name, arguments in turn.calls:
            seen = alone.get((name, arguments), [])
            contents = {content for _, content in seen}
            before = any(position < turn.position for position, _ in seen)
            after = any(position > turn.position for position, _ in seen)
            if before and after and len(contents) == 1:
                known[call_id] = contents.pop()
        got = dict(turn.replies)
        names = {call_id: name for call_id, name, _ in turn.calls}
        for call_id, result in known.items():
            reply = got.get(call_id)
            if reply is None or reply == result:
                continue
            for other, other_result in known.items():
                if other != call_id and other_result == reply and other_result != result:
                    problems.append(
                        f"message {turn.position}: the tool message for call {call_id!r} "
                        f"({names[call_id]}) carries the result of call {other!r} "
                        f"({names[other]}): {reply[:60]!r}, where {names[call_id]} with "
                        f"these arguments alone gave {result[:60]!r}"
                    )
                    break
    return problems


@rule(
    "error-keeps-trajectory",
    level="strict",
    cites="docs/PROTOCOL.md §5.2",
    focus="error",
    summary=(
        "An ERROR result carries the trajectory so far (extending the last chat request) "
        "and a non-empty error_message."
    ),
)
def error_keeps_trajectory(ex: Exchange) -> list[str]:
    problems: list[str] = []
    _, final = expected_prefixes(ex)
    for body in result_bodies(ex):
        if body.get("status") != "ERROR":
            continue
        messages = messages_of(body, "final_messages")
        if not messages:
            problems.append("the ERROR result has empty final_messages")
        elif why := divergence(messages, final):
            problems.append(f"final_messages of the ERROR result: {why}")
        message = body.get("error_message")
        if not isinstance(message, str) or not message.strip():
            problems.append("the ERROR result has no error_message")
    return unique(problems)


@rule(
    "params-passthrough",
    level="strict",
    cites="docs/PROTOCOL.md §4.1",
    focus="params",
    summary=(
        "completion_params keys beyond the reference's five reach every chat request unchanged."
    ),
)
def params_passthrough(ex: Exchange) -> list[str]:
    extra = {k: v for k, v in ex.case.completion_params.items() if k not in STANDARD_PARAMS}
    problems: list[str] = []
    for number, entry in enumerate(ex.chat, 1):
        if not isinstance(entry.body, dict):
            continue
        for key, value in extra.items():
            if key not in entry.body:
                problems.append(f"chat request #{number} lacks completion_params key {key!r}")
            elif entry.body[key] != value:
                problems.append(f"chat request #{number} changed {key!r}")
    return unique(problems)


@rule(
    "reused-key-409",
    level="strict",
    cites="docs/PROTOCOL.md §2.4",
    focus="changed",
    summary=("The same idempotency key with a different body is refused with 409."),
)
def changed_body_conflict(ex: Exchange) -> list[str]:
    return [
        f"a changed body with the same idempotency key got {again.status}, expected 409"
        for again in ex.inits
        if again.sent == "changed" and again.status != 409
    ]


@rule(
    "tool-results-in-order",
    level="strict",
    cites="docs/PROTOCOL.md §7.2",
    focus="tool_results",
    summary=(
        "A turn's tool messages answer its calls in the order the calls were made, and "
        "none carries another call's result (a call made alone before and after, with one "
        "result each time, must get that result in a turn of several calls too)."
    ),
)
def tool_results_in_order(ex: Exchange) -> list[str]:
    start = len(ex.case.messages)
    histories = [
        (f"chat request #{n}", messages_of(entry.body)) for n, entry in enumerate(ex.chat, 1)
    ]
    histories += [
        ("final_messages", messages_of(body, "final_messages")) for body in result_bodies(ex)
    ]
    # A problem is repeated by every later history: report it where it first appears.
    first_seen: dict[str, str] = {}
    for where, messages in histories:
        if messages is None:
            continue
        turns = _tool_turns(messages, start)
        for problem in [p for turn in turns for p in _order_problems(turn)] + _swap_problems(turns):
            first_seen.setdefault(problem, f"{where}: {problem}")
    return list(first_seen.values())
