"""Hypothesis strategies: cases built from the tools the server advertised.

Nothing here knows the server's agent: tool calls are generated from each advertised
tool's JSON Schema (a subset large enough for OpenAI function schemas: types, enum,
const, anyOf/oneOf, properties/required, items, minimum/maximum), mixed with malformed
argument JSON and unknown tool names. Arguments need not be valid for the rules to
apply: an invalid call must still get a tool message (docs/PROTOCOL.md §7.2).

hypothesis-jsonschema was the first choice for the schema part; its 0.23.1 (the latest)
breaks on current Hypothesis (``'many' object has no attribute 'more'``).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import strategies as st

from .case import Case, FaultKind, InvalidInit, ToolCallScript, Turn
from .rules import Focus

__all__ = ["API_KEY", "UNKNOWN_TOOL", "cases_for", "from_schema", "invalid_inits"]

#: The api_key cases send (docs/PROTOCOL.md §2.1); test data, not a secret.
API_KEY = "conformance-trainer-key"
UNKNOWN_TOOL = "conformance_no_such_tool"
#: Placeholder in :class:`InvalidInit` bodies, replaced by the case's server_url.
SERVER_URL = "$SERVER_URL"

_JSON_SCALARS = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_TEXT = st.text(max_size=40)


def from_schema(schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON values for ``schema`` (keywords outside the supported subset are ignored)."""
    if not isinstance(schema, dict) or depth > 4:
        return _JSON
    schema = {k: v for k, v in schema.items() if v is not None}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return st.one_of([from_schema(s, depth + 1) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return st.one_of([from_schema({**schema, "type": k}, depth) for k in kind])
    if kind is None and "properties" in schema:
        kind = "object"
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "integer":
        return st.integers(
            int(low) if isinstance(low, int | float) else -1000,
            int(high) if isinstance(high, int | float) else 1000,
        )
    if kind == "number":
        lo = float(low) if isinstance(low, int | float) else -1e6
        hi = float(high) if isinstance(high, int | float) else 1e6
        return st.integers(int(max(lo, -1000)), int(min(hi, 1000))) | st.floats(
            lo, hi, allow_nan=False, allow_infinity=False
        )
    if kind == "string":
        return st.text(max_size=20)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items"), depth + 1), max_size=3)
    if kind == "object":
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        return st.fixed_dictionaries(
            {k: from_schema(v, depth + 1) for k, v in properties.items() if k in required},
            optional={
                k: from_schema(v, depth + 1) for k, v in properties.items() if k not in required
            },
        )
    return _JSON


def _named(tools: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(name, parameters) of each advertised tool that has a name."""
    return [
        (tool["function"]["name"], tool["function"].get("parameters"))
        for tool in tools
        if isinstance(tool, dict)
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
    ]


def _tool_call(tools: list[dict[str, Any]]) -> st.SearchStrategy[ToolCallScript]:
    named = _named(tools)
    malformed = st.sampled_from(['{"a": ', "not json", "", "[1, 2]", '{"a": 1}}'])
    strategies = [st.builds(ToolCallScript, st.just(UNKNOWN_TOOL), st.just("{}"))]
    if named:
        valid = st.sampled_from(named).flatmap(
            lambda pair: st.builds(
                ToolCallScript, st.just(pair[0]), from_schema(pair[1]).map(json.dumps)
            )
        )
        bad = st.builds(ToolCallScript, st.sampled_from([n for n, _ in named]), malformed)
        strategies = [valid, valid, valid, bad, *strategies]
    return st.one_of(strategies)


@st.composite
def _turn(
    draw: st.DrawFn,
    tools: list[dict[str, Any]],
    faults: st.SearchStrategy[tuple[FaultKind, ...]],
    tokens: st.SearchStrategy[int],
) -> Turn:
    # Mostly tool calls: a text-only answer ends most agents' loops.
    calls = tuple(
        draw(
            st.lists(_tool_call(tools), min_size=1, max_size=3)
            if draw(st.integers(0, 3))
            else st.just([])
        )
    )
    return Turn(
        content=draw(st.none() | _TEXT) if calls else draw(_TEXT),
        tool_calls=calls,
        completion_tokens=draw(tokens),
        faults=draw(faults),
        delay=draw(st.sampled_from([0.0, 0.0, 0.0, 0.05, 0.2])),
    )


_EXTRA_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "seed": st.integers(0, 2**31),
        "top_k": st.integers(1, 100),
        "presence_penalty": st.floats(-2, 2, allow_nan=False),
        "x_conformance": _JSON,
    },
)
_STANDARD_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2, allow_nan=False),
        "top_p": st.floats(0, 1, allow_nan=False),
        "max_tokens": st.integers(1, 4096),
        "stop": st.text(min_size=1, max_size=5)
        | st.lists(st.text(min_size=1, max_size=5), max_size=3),
        "logprobs": st.booleans(),
    },
)


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except json.JSONDecodeError:
        return arguments


@st.composite
def _tool_results_turns(draw: st.DrawFn, tools: list[dict[str, Any]]) -> list[Turn]:
    """Two or three different calls, each made alone, then together in one turn (in some
    order), then each alone again: what the tool-results rule needs to know each call's
    result without knowing the tools."""
    strategy = _tool_call(tools)
    if not _named(tools):  # a server without tools: unknown ones, with distinct arguments
        arguments = st.integers(0, 9).map(lambda n: json.dumps({"n": n}))
        strategy = st.builds(ToolCallScript, st.just(UNKNOWN_TOOL), arguments)
    calls = draw(
        st.lists(
            strategy,
            min_size=2,
            max_size=3,
            unique_by=lambda call: (call.name, _canonical(call.arguments)),
        )
    )
    alone = [Turn(content=draw(st.none() | _TEXT), tool_calls=(call,)) for call in calls]
    together = Turn(content=draw(st.none() | _TEXT), tool_calls=tuple(draw(st.permutations(calls))))
    return [*alone, together, *alone]


@st.composite
def cases_for(
    draw: st.DrawFn, tools: list[dict[str, Any]], focus: Focus, *, slow: float = 6.0
) -> Case:
    """Rollout cases shaped for a rule's ``focus`` (rollout ids are set by the runner).

    - "budget": small ``max_turns``/``max_tokens_total`` and scripts longer than them;
    - "faults": trainer faults on chat turns (``slow`` answers take ``slow`` seconds) and
      on result delivery;
    - "tool_results": calls made alone, then together, then alone again (and a budget
      that lets the whole script run);
    - "error": a non-retryable fault after at least one turn (an ERROR with a trajectory);
    - "duplicate" / "changed": the init is sent twice / again with another body;
    - "params": sampling keys beyond the reference's five;
    - "rollout": a bit of everything, rarely faulted.
    """
    retryable: list[FaultKind] = ["http_500", "http_503"]
    if focus == "faults":
        fault_kinds: list[FaultKind] = [*retryable, "http_400", "broken_body", "slow"]
        faults = st.lists(st.sampled_from(fault_kinds), max_size=2).map(tuple)
    elif focus == "rollout":
        faults = st.sampled_from([(), (), (), (), ("http_500",)])
    else:
        faults = st.just(())
    budget = focus == "budget"
    tokens = st.integers(1, 120) if budget else st.integers(1, 60)
    if focus == "tool_results":
        turns = draw(_tool_results_turns(tools))
    else:
        turns = draw(st.lists(_turn(tools, faults, tokens), max_size=6 if budget else 4))
    turns = _cap_faults(turns, 3)
    if focus == "faults" and draw(st.booleans()):
        # Half the faulted cases answer one turn slowly, whatever else they script.
        if not turns:
            turns = [Turn(content=draw(_TEXT))]
        at = draw(st.integers(0, len(turns) - 1))
        turns[at] = attrs.evolve(turns[at], faults=("slow", *turns[at].faults))
    if focus == "error":
        position = draw(st.integers(1, len(turns) + 1))
        turns = [*turns[:position], Turn(content="unreached", faults=("http_400",))]
    params: dict[str, Any] = dict(draw(_STANDARD_PARAMS))
    if focus in ("params", "rollout"):
        params |= draw(_EXTRA_PARAMS)
    system = draw(st.none() | _TEXT)
    messages: tuple[dict[str, Any], ...] = (
        ({"role": "system", "content": system},) if system is not None else ()
    )
    messages += ({"role": "user", "content": draw(st.text(min_size=1, max_size=60))},)
    max_turns = draw(st.integers(1, 4) if budget else st.integers(1, 8))
    max_tokens_total = draw(st.integers(1, 300) if budget else st.integers(200, 8192))
    if focus == "tool_results":  # the whole script, and the final answer, must run
        max_turns = len(turns) + 1
        max_tokens_total = max(max_tokens_total, sum(t.completion_tokens for t in turns) + 100)
    return Case(
        rollout_id="",
        messages=messages,
        completion_params=params,
        max_turns=max_turns,
        max_tokens_total=max_tokens_total,
        metadata=draw(st.fixed_dictionaries({}, optional={"ground_truth": _TEXT, "extra": _JSON})),
        api_key=draw(st.none() | st.just(API_KEY)),
        idempotency_key=draw(st.none() | st.just("")),
        turns=tuple(turns),
        result_statuses=draw(
            st.lists(st.sampled_from([500, 503]), max_size=2).map(tuple)
            if focus == "faults"
            else st.just(())
        ),
        duplicate_init=focus == "duplicate" or (draw(st.booleans()) and focus == "changed"),
        changed_init=focus == "changed",
        slow=slow,
    )


def _cap_faults(turns: list[Turn], limit: int) -> list[Turn]:
    """Keep the first ``limit`` faults of a script: each may cost a retry wait."""
    capped = []
    for turn in turns:
        kept = turn.faults[: max(limit, 0)]
        limit -= len(kept)
        capped.append(attrs.evolve(turn, faults=kept))
    return capped


def invalid_inits() -> st.SearchStrategy[InvalidInit]:
    """Init requests that are not JSON or do not validate (docs/PROTOCOL.md §2.3)."""
    ok = {
        "rollout_id": "",
        "server_url": SERVER_URL,
        "messages": [{"role": "user", "content": "hi"}],
    }

    def without(key: str) -> str:
        return json.dumps({k: v for k, v in ok.items() if k != key})

    def with_(key: str, value: Any) -> str:
        return json.dumps({**ok, key: value})

    bodies = [
        ("not JSON", "{not json"),
        ("an empty body", ""),
        ("a JSON array", "[]"),
        ("a JSON string", '"hello"'),
        ("no rollout_id", without("rollout_id")),
        ("no server_url", without("server_url")),
        ("no messages", without("messages")),
        ("messages is a string", with_("messages", "hi")),
        ("messages is empty", with_("messages", [])),
        ("rollout_id is a number", with_("rollout_id", 12345)),
        ("max_turns is not a number", with_("max_turns", "three")),
        ("completion_params is a list", with_("completion_params", [1, 2])),
        ("metadata is a string", with_("metadata", "x")),
    ]
    return st.sampled_from(bodies).map(lambda pair: InvalidInit("", pair[0], pair[1]))
