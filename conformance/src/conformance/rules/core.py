"""The core rules: what the reference protocol itself requires of any rollout server
(docs/PROTOCOL.md §2, §5 and §7)."""

from __future__ import annotations

import json

from ..exchange import Exchange, InvalidExchange
from ._history import (
    METRIC_KEYS,
    divergence,
    expected_prefixes,
    messages_of,
    result_bodies,
    tool_message_problems,
    tool_schema_problems,
    unique,
)
from ._registry import all_rules, rule


@rule(
    "init-response",
    level="core",
    cites="docs/PROTOCOL.md §2.2",
    focus="rollout",
    summary=(
        "POST /v1/rollout/init answers 202 {rollout_id, tools}; each tool is an OpenAI "
        "function schema whose parameters are a JSON Schema object."
    ),
)
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
            problems.extend(tool_schema_problems(tool))
    return problems


@rule(
    "append-only",
    level="core",
    cites="docs/PROTOCOL.md §7.1",
    focus="rollout",
    summary=(
        "Each chat request extends the previous one plus the answer to it; a COMPLETED "
        "result's final_messages extends the last one. Nothing is dropped or rewritten."
    ),
)
def append_only(ex: Exchange) -> list[str]:
    problems: list[str] = []
    prefixes, final = expected_prefixes(ex)
    for number, entry, base in prefixes:
        messages = messages_of(entry.body)
        if messages is None:
            problems.append(f"chat request #{number} has no 'messages' list")
        elif why := divergence(messages, base):
            problems.append(f"chat request #{number}: {why}")
    for body in result_bodies(ex):
        messages = messages_of(body, "final_messages")
        if body.get("status") != "COMPLETED" or messages is None:
            continue
        if why := divergence(messages, final):
            problems.append(f"final_messages of the COMPLETED result: {why}")
    return unique(problems)


@rule(
    "tool-messages",
    level="core",
    cites="docs/PROTOCOL.md §7.2",
    focus="rollout",
    summary=(
        "Every tool call id is answered exactly once, by tool messages right after its "
        "assistant message, before the next chat request."
    ),
)
def tool_messages(ex: Exchange) -> list[str]:
    start = len(ex.case.messages)
    # A bad message is repeated by every later request: report it where it first appears.
    first_seen: dict[str, str] = {}
    for number, entry in enumerate(ex.chat, 1):
        messages = messages_of(entry.body)
        if messages is not None:
            for problem in tool_message_problems(messages, start, final=False):
                first_seen.setdefault(problem, f"chat request #{number}: {problem}")
    for body in result_bodies(ex):
        messages = messages_of(body, "final_messages")
        if messages:
            for problem in tool_message_problems(messages, start, final=True):
                first_seen.setdefault(problem, f"final_messages: {problem}")
    return list(first_seen.values())


@rule(
    "idempotent-init",
    level="core",
    cites="docs/PROTOCOL.md §7.3",
    focus="duplicate",
    summary=("A duplicate init gets the same answer and starts no second run or result."),
    settles=True,
)
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
        if entry.turn is not None and len(messages_of(entry.body) or ()) == initial
    )
    if runs > 1:
        problems.append(f"the rollout ran {runs} times: {runs} first-turn chat requests answered")
    distinct = {json.dumps(body, sort_keys=True) for body in result_bodies(ex)}
    if len(distinct) > 1:
        problems.append(f"{len(distinct)} different results for one idempotency key")
    return problems


@rule(
    "max-turns",
    level="core",
    cites="docs/PROTOCOL.md §7.4",
    focus="budget",
    summary=("At most max_turns chat turns (retries of one turn count once)."),
)
def max_turns(ex: Exchange) -> list[str]:
    chat = ex.chat
    turns = sum(1 for entry in chat if entry.turn is not None)
    if chat and chat[-1].turn is None:
        turns += 1  # a failed last attempt still started a turn
    if turns > ex.case.max_turns:
        return [f"{turns} chat turns for max_turns={ex.case.max_turns}"]
    return []


@rule(
    "max-tokens-total",
    level="core",
    cites="docs/PROTOCOL.md §7.4",
    focus="budget",
    summary=("No chat request once the summed usage.completion_tokens reached max_tokens_total."),
)
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


@rule(
    "callback-auth",
    level="core",
    cites="docs/PROTOCOL.md §7.5",
    focus="rollout",
    summary=(
        "Authorization: Bearer <api_key> on every callback when api_key was given, and no "
        "Authorization header when it was not."
    ),
)
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
    return unique(problems)


@rule(
    "exactly-one-result",
    level="core",
    cites="docs/PROTOCOL.md §7.6",
    focus="faults",
    summary=(
        "Every accepted rollout gets one result (identical re-posts allowed) within the "
        "result timeout, whatever the trainer did (faults, slow answers), and no "
        "different one later within the settle period."
    ),
    settles=True,
)
def exactly_one_result(ex: Exchange) -> list[str]:
    if not ex.accepted:
        return []
    problems: list[str] = []
    if not ex.acknowledged:
        refused = sum(1 for entry in ex.results if not 200 <= entry.status < 300)
        note = f" ({refused} posts were refused as scripted)" if refused else ""
        problems.append(f"no result was delivered within {ex.result_timeout:g} s{note}")
    bodies = result_bodies(ex)
    distinct = {json.dumps(body, sort_keys=True) for body in bodies}
    if len(distinct) > 1:
        problems.append(f"{len(distinct)} different results were posted for one rollout")
    for body in bodies:
        if body.get("rollout_id") != ex.case.rollout_id:
            problems.append(f"a result carries rollout_id {body.get('rollout_id')!r}")
    if len(bodies) != len(ex.results):
        problems.append("a result post was not a JSON object")
    return unique(problems)


@rule(
    "result-shape",
    level="core",
    cites="docs/PROTOCOL.md §5.1",
    focus="faults",
    summary=(
        "The result has rollout_id, status COMPLETED|ERROR, final_messages, finish_reason "
        "and the metrics keys; reward, when present, is a number."
    ),
    settles=True,
)
def result_shape(ex: Exchange) -> list[str]:
    problems: list[str] = []
    for body in result_bodies(ex):
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
    return unique(problems)


@rule(
    "invalid-init-4xx",
    level="core",
    cites="docs/PROTOCOL.md §2.3",
    focus="invalid_init",
    summary=(
        "An init body that is not JSON or does not validate gets a 4xx (never a 5xx) and "
        "starts nothing."
    ),
)
def invalid_init_refused(ex: InvalidExchange) -> list[str]:
    problems: list[str] = []
    if not 400 <= ex.status < 500:
        problems.append(f"{ex.case.why}: answered {ex.status}, expected a 4xx")
    if ex.wire:
        problems.append(f"{ex.case.why}: the server called back {len(ex.wire)} times")
    return problems


@rule(
    "interleaved-rollouts",
    level="core",
    cites="docs/PROTOCOL.md §7",
    focus="stateful",
    summary=(
        "Concurrent inits, duplicates, faults and waits interleaved by a Hypothesis state "
        "machine: every core rule above holds for every rollout."
    ),
    settles=True,
)
def every_core_rule(ex: Exchange) -> list[str]:
    """All core per-rollout rules at once (for interleaved rollouts), prefixed by name."""
    return [
        f"{rule.name}: {violation}"
        for rule in all_rules()
        if rule.level == "core" and rule.focus not in ("invalid_init", "stateful")
        for violation in rule.check(ex)
    ]
