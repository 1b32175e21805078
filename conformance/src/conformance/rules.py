"""The protocol rules, each a pure check of what the trainer saw.

Every rule has a name, a level and the section of docs/PROTOCOL.md it comes from:

- **core**: what the reference protocol itself requires; a fair bar for any server;
- **strict**: this project's stronger guarantees (marked [ours] in docs/PROTOCOL.md).

A check returns the list of violations (human-readable, one per problem); empty means the
exchange kept the rule. ``focus`` tells the strategies which situations exercise the rule
(see :func:`conformance.strategies.cases_for`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import attrs
import jsonschema

from .exchange import Exchange, InvalidExchange
from .trainer import WireEntry

__all__ = ["RULES", "Focus", "Level", "Rule", "select_rules"]

Level = Literal["core", "strict"]
#: Which situations a rule needs: see :func:`conformance.strategies.cases_for`.
Focus = Literal[
    "rollout",
    "budget",
    "faults",
    "duplicate",
    "changed",
    "params",
    "error",
    "invalid_init",
    "stateful",
    "tool_results",
]

#: The sampling keys the reference itself sends (docs/PROTOCOL.md §4.1); others are "extra".
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
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@attrs.frozen
class Rule:
    """A named protocol rule: ``check`` returns the violations found in one exchange.

    ``settles``: the rule is about results, so each case keeps listening for the settle
    period after its first result (a second, different result may come seconds later);
    other rules listen only briefly (see :class:`conformance.runner.RunSettings`).
    """

    name: str
    level: Level
    cites: str
    summary: str
    focus: Focus
    check: Callable[[Any], list[str]] = attrs.field(repr=False)
    settles: bool = False


# -- helpers ----------------------------------------------------------------------------


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.dumps(json.loads(raw), sort_keys=True)
        except json.JSONDecodeError:
            return raw
    return json.dumps(raw, sort_keys=True)


def _norm(message: Any) -> Any:
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
            _arguments((call.get("function") or {}).get("arguments")),
        )
        if isinstance(call, dict)
        else ("not an object",)
        for call in (message.get("tool_calls") or ())
    )
    return (message.get("role"), content or "", calls, message.get("tool_call_id"))


def _diverges(messages: Sequence[Any], prefix: Sequence[Any]) -> str | None:
    """Why ``messages`` does not start with ``prefix`` (None when it does)."""
    for index, expected in enumerate(prefix):
        if index >= len(messages):
            return (
                f"history has {len(messages)} messages, the {len(prefix)} before it were "
                f"dropped from message {index} on"
            )
        if _norm(messages[index]) != _norm(expected):
            role = expected.get("role") if isinstance(expected, dict) else "?"
            return f"message {index} ({role}) was rewritten or replaced"
    return None


def _messages(entry_body: Any, key: str = "messages") -> list[Any] | None:
    if isinstance(entry_body, dict) and isinstance(entry_body.get(key), list):
        return list(entry_body[key])
    return None


def _expected_prefixes(ex: Exchange) -> tuple[list[tuple[int, WireEntry, list[Any]]], list[Any]]:
    """For each chat request, the history it must start with (docs/PROTOCOL.md §7.1), and
    the history ``final_messages`` must start with."""
    base: list[Any] = list(ex.case.messages)
    out = []
    for number, entry in enumerate(ex.chat, 1):
        out.append((number, entry, base))
        messages = _messages(entry.body)
        if messages is None:
            continue
        answer = ex.answered_message(entry)
        base = [*messages, answer] if answer is not None else messages
    return out, base


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _result_bodies(ex: Exchange) -> list[dict[str, Any]]:
    return [entry.body for entry in ex.results if isinstance(entry.body, dict)]


# -- core -------------------------------------------------------------------------------


def _check_tool_schema(tool: Any) -> list[str]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return [f"tool {json.dumps(tool)[:80]} is not {{'type': 'function', ...}}"]
    function = tool.get("function")
    if not isinstance(function, dict):
        return ["tool has no 'function' object"]
    name = function.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        return [f"tool name {name!r} is not 1-64 characters of [a-zA-Z0-9_-]"]
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        return [f"tool {name}: 'parameters' is not a JSON Schema of type object"]
    try:
        # null-valued keywords (the reference's pydantic output has "enum": null) mean absent.
        jsonschema.Draft202012Validator.check_schema(_drop_nulls(parameters))
    except jsonschema.SchemaError as exc:
        return [f"tool {name}: 'parameters' is not a valid JSON Schema: {exc.message}"]
    return []


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def init_response(ex: Exchange) -> list[str]:
    first = ex.inits[0]
    if first.status != 202:
        return [f"init answered {first.status}, expected 202: {str(first.body)[:200]}"]
    body = first.body
    if not isinstance(body, dict):
        return ["the 202 body is not a JSON object"]
    problems: list[str] = []
    if body.get("rollout_id") != ex.case.rollout_id:
        problems.append(
            f"202 rollout_id is {body.get('rollout_id')!r}, sent {ex.case.rollout_id!r}"
        )
    tools = body.get("tools")
    if not isinstance(tools, list):
        problems.append("the 202 body has no 'tools' list")
    else:
        for tool in tools:
            problems.extend(_check_tool_schema(tool))
    return problems


def append_only(ex: Exchange) -> list[str]:
    problems: list[str] = []
    prefixes, final = _expected_prefixes(ex)
    for number, entry, base in prefixes:
        messages = _messages(entry.body)
        if messages is None:
            problems.append(f"chat request #{number} has no 'messages' list")
        elif why := _diverges(messages, base):
            problems.append(f"chat request #{number}: {why}")
    for body in _result_bodies(ex):
        messages = _messages(body, "final_messages")
        if body.get("status") != "COMPLETED" or messages is None:
            continue
        if why := _diverges(messages, final):
            problems.append(f"final_messages of the COMPLETED result: {why}")
    return _unique(problems)


def _tool_message_problems(messages: list[Any], start: int, *, final: bool) -> list[str]:
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


def tool_messages(ex: Exchange) -> list[str]:
    start = len(ex.case.messages)
    # A bad message is repeated by every later request: report it where it first appears.
    first_seen: dict[str, str] = {}
    for number, entry in enumerate(ex.chat, 1):
        messages = _messages(entry.body)
        if messages is not None:
            for problem in _tool_message_problems(messages, start, final=False):
                first_seen.setdefault(problem, f"chat request #{number}: {problem}")
    for body in _result_bodies(ex):
        messages = _messages(body, "final_messages")
        if messages:
            for problem in _tool_message_problems(messages, start, final=True):
                first_seen.setdefault(problem, f"final_messages: {problem}")
    return list(first_seen.values())


def idempotent_init(ex: Exchange) -> list[str]:
    problems: list[str] = []
    first = ex.inits[0]
    for again in ex.inits[1:]:
        if again.sent != "duplicate":
            continue
        if again.status != first.status:
            problems.append(f"the duplicate init got {again.status}, the first {first.status}")
        elif again.body != first.body:
            problems.append("the duplicate init got another body than the first")
    initial = len(ex.case.messages)
    runs = sum(
        1
        for entry in ex.chat
        if entry.turn is not None and len(_messages(entry.body) or ()) == initial
    )
    if runs > 1:
        problems.append(f"the rollout ran {runs} times: {runs} first-turn chat requests answered")
    distinct = {json.dumps(body, sort_keys=True) for body in _result_bodies(ex)}
    if len(distinct) > 1:
        problems.append(f"{len(distinct)} different results for one idempotency key")
    return problems


def max_turns(ex: Exchange) -> list[str]:
    chat = ex.chat
    turns = sum(1 for entry in chat if entry.turn is not None)
    if chat and chat[-1].turn is None:
        turns += 1  # a failed last attempt still started a turn
    if turns > ex.case.max_turns:
        return [f"{turns} chat turns for max_turns={ex.case.max_turns}"]
    return []


def max_tokens_total(ex: Exchange) -> list[str]:
    total = 0
    for number, entry in enumerate(ex.chat, 1):
        if total >= ex.case.max_tokens_total:
            return [
                f"chat request #{number} was sent after {total} completion tokens "
                f"(max_tokens_total={ex.case.max_tokens_total})"
            ]
        total += ex.completion_tokens(entry)
    return []


def callback_auth(ex: Exchange) -> list[str]:
    problems: list[str] = []
    for entry in ex.wire:
        given = entry.headers.get("authorization")
        where = f"{entry.kind} callback"
        if ex.case.api_key is None:
            if given is not None:
                problems.append(f"{where} has an Authorization header, but no api_key was given")
        elif given is None:
            problems.append(f"{where} has no Authorization header (api_key was given)")
        elif given != f"Bearer {ex.case.api_key}":
            problems.append(f"{where}: Authorization is not 'Bearer <api_key>'")
    return _unique(problems)


def exactly_one_result(ex: Exchange) -> list[str]:
    if not ex.accepted:
        return []
    problems: list[str] = []
    if not ex.acknowledged:
        refused = sum(1 for entry in ex.results if not 200 <= entry.status < 300)
        note = f" ({refused} posts were refused as scripted)" if refused else ""
        problems.append(f"no result was delivered within {ex.result_timeout:g} s{note}")
    bodies = _result_bodies(ex)
    distinct = {json.dumps(body, sort_keys=True) for body in bodies}
    if len(distinct) > 1:
        problems.append(f"{len(distinct)} different results were posted for one rollout")
    for body in bodies:
        if body.get("rollout_id") != ex.case.rollout_id:
            problems.append(f"a result carries rollout_id {body.get('rollout_id')!r}")
    if len(bodies) != len(ex.results):
        problems.append("a result post was not a JSON object")
    return _unique(problems)


def result_shape(ex: Exchange) -> list[str]:
    problems: list[str] = []
    for body in _result_bodies(ex):
        if body.get("status") not in ("COMPLETED", "ERROR"):
            problems.append(f"status is {body.get('status')!r}, not COMPLETED or ERROR")
        if not isinstance(body.get("final_messages"), list):
            problems.append("final_messages is not a list")
        if not isinstance(body.get("finish_reason"), str):
            problems.append("finish_reason is not a string")
        if (
            "reward" in body
            and body["reward"] is not None
            and (isinstance(body["reward"], bool) or not isinstance(body["reward"], int | float))
        ):
            problems.append(f"reward is {body['reward']!r}, not a number")
        metrics = body.get("metrics")
        if not isinstance(metrics, dict):
            problems.append("metrics is not an object")
        else:
            missing = [key for key in METRIC_KEYS if key not in metrics]
            if missing:
                problems.append(f"metrics lacks {', '.join(missing)}")
    return _unique(problems)


def invalid_init_refused(ex: InvalidExchange) -> list[str]:
    problems: list[str] = []
    if not 400 <= ex.status < 500:
        problems.append(f"{ex.case.why}: answered {ex.status}, expected a 4xx")
    if ex.wire:
        problems.append(f"{ex.case.why}: the server called back {len(ex.wire)} times")
    return problems


# -- strict -----------------------------------------------------------------------------


def error_keeps_trajectory(ex: Exchange) -> list[str]:
    problems: list[str] = []
    _, final = _expected_prefixes(ex)
    for body in _result_bodies(ex):
        if body.get("status") != "ERROR":
            continue
        messages = _messages(body, "final_messages")
        if not messages:
            problems.append("the ERROR result has empty final_messages")
        elif why := _diverges(messages, final):
            problems.append(f"final_messages of the ERROR result: {why}")
        message = body.get("error_message")
        if not isinstance(message, str) or not message.strip():
            problems.append("the ERROR result has no error_message")
    return _unique(problems)


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
    return _unique(problems)


def changed_body_conflict(ex: Exchange) -> list[str]:
    return [
        f"a changed body with the same idempotency key got {again.status}, expected 409"
        for again in ex.inits
        if again.sent == "changed" and again.status != 409
    ]


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
        _arguments(function.get("arguments")),
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


def tool_results_in_order(ex: Exchange) -> list[str]:
    start = len(ex.case.messages)
    histories = [
        (f"chat request #{n}", _messages(entry.body)) for n, entry in enumerate(ex.chat, 1)
    ]
    histories += [
        ("final_messages", _messages(body, "final_messages")) for body in _result_bodies(ex)
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


def every_core_rule(ex: Exchange) -> list[str]:
    """All core per-rollout rules at once (for interleaved rollouts), prefixed by name."""
    return [
        f"{rule.name}: {violation}"
        for rule in RULES
        if rule.level == "core" and rule.focus not in ("invalid_init", "stateful")
        for violation in rule.check(ex)
    ]


RULES: tuple[Rule, ...] = (
    Rule(
        "init-response",
        "core",
        "docs/PROTOCOL.md §2.2",
        "POST /v1/rollout/init answers 202 {rollout_id, tools}; each tool is an OpenAI "
        "function schema whose parameters are a JSON Schema object.",
        "rollout",
        init_response,
    ),
    Rule(
        "append-only",
        "core",
        "docs/PROTOCOL.md §7.1",
        "Each chat request extends the previous one plus the answer to it; a COMPLETED "
        "result's final_messages extends the last one. Nothing is dropped or rewritten.",
        "rollout",
        append_only,
    ),
    Rule(
        "tool-messages",
        "core",
        "docs/PROTOCOL.md §7.2",
        "Every tool call id is answered exactly once, by tool messages right after its "
        "assistant message, before the next chat request.",
        "rollout",
        tool_messages,
    ),
    Rule(
        "idempotent-init",
        "core",
        "docs/PROTOCOL.md §7.3",
        "A duplicate init gets the same answer and starts no second run or result.",
        "duplicate",
        idempotent_init,
        settles=True,
    ),
    Rule(
        "max-turns",
        "core",
        "docs/PROTOCOL.md §7.4",
        "At most max_turns chat turns (retries of one turn count once).",
        "budget",
        max_turns,
    ),
    Rule(
        "max-tokens-total",
        "core",
        "docs/PROTOCOL.md §7.4",
        "No chat request once the summed usage.completion_tokens reached max_tokens_total.",
        "budget",
        max_tokens_total,
    ),
    Rule(
        "callback-auth",
        "core",
        "docs/PROTOCOL.md §7.5",
        "Authorization: Bearer <api_key> on every callback when api_key was given, and no "
        "Authorization header when it was not.",
        "rollout",
        callback_auth,
    ),
    Rule(
        "exactly-one-result",
        "core",
        "docs/PROTOCOL.md §7.6",
        "Every accepted rollout gets one result (identical re-posts allowed) within the "
        "result timeout, whatever the trainer did (faults, slow answers), and no different "
        "one later within the settle period.",
        "faults",
        exactly_one_result,
        settles=True,
    ),
    Rule(
        "result-shape",
        "core",
        "docs/PROTOCOL.md §5.1",
        "The result has rollout_id, status COMPLETED|ERROR, final_messages, finish_reason "
        "and the metrics keys; reward, when present, is a number.",
        "faults",
        result_shape,
        settles=True,
    ),
    Rule(
        "invalid-init-4xx",
        "core",
        "docs/PROTOCOL.md §2.3",
        "An init body that is not JSON or does not validate gets a 4xx (never a 5xx) and "
        "starts nothing.",
        "invalid_init",
        invalid_init_refused,
    ),
    Rule(
        "interleaved-rollouts",
        "core",
        "docs/PROTOCOL.md §7",
        "Concurrent inits, duplicates, faults and waits interleaved by a Hypothesis state "
        "machine: every core rule above holds for every rollout.",
        "stateful",
        every_core_rule,
        settles=True,
    ),
    Rule(
        "error-keeps-trajectory",
        "strict",
        "docs/PROTOCOL.md §5.2",
        "An ERROR result carries the trajectory so far (extending the last chat request) "
        "and a non-empty error_message.",
        "error",
        error_keeps_trajectory,
    ),
    Rule(
        "params-passthrough",
        "strict",
        "docs/PROTOCOL.md §4.1",
        "completion_params keys beyond the reference's five reach every chat request unchanged.",
        "params",
        params_passthrough,
    ),
    Rule(
        "reused-key-409",
        "strict",
        "docs/PROTOCOL.md §2.4",
        "The same idempotency key with a different body is refused with 409.",
        "changed",
        changed_body_conflict,
    ),
    Rule(
        "tool-results-in-order",
        "strict",
        "docs/PROTOCOL.md §7.2",
        "A turn's tool messages answer its calls in the order the calls were made, and none "
        "carries another call's result (a call made alone before and after, with one result "
        "each time, must get that result in a turn of several calls too).",
        "tool_results",
        tool_results_in_order,
    ),
)


def select_rules(names: Iterable[str]) -> tuple[Rule, ...]:
    """Rules by name, or the sets "core", "strict" and "all" (the default).

    Raises :class:`ValueError` naming the unknown entries.
    """
    wanted = [name.strip() for name in names if name.strip()] or ["all"]
    by_name = {rule.name: rule for rule in RULES}
    unknown = [n for n in wanted if n not in by_name and n not in ("core", "strict", "all")]
    if unknown:
        raise ValueError(
            f"unknown rule(s) {', '.join(unknown)}; known: core, strict, all, " + ", ".join(by_name)
        )
    chosen = {
        rule.name
        for name in wanted
        for rule in RULES
        if name in ("all", rule.level) or name == rule.name
    }
    return tuple(rule for rule in RULES if rule.name in chosen)
