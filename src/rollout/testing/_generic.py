"""The scripted model for any agent: call the tools the agent advertised, then answer.

Pure logic, no I/O, stateless (the next step comes from the history alone):

1. First turn: one call to each advertised tool (at most :data:`MAX_CALLS`), with arguments
   generated from the tool's JSON Schema: every required property, strings taken from the
   question where one fits (a quoted phrase, else its last capitalised word: "the weather
   in Paris?" gives "Paris"), the first value of an ``enum``, 1 for numbers, true for
   booleans, empty arrays, objects built the same way.
2. Once those calls are answered: a final answer that quotes each tool result, so a reward
   that looks for the ground truth in the answer can find it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MAX_CALLS", "arguments_for", "respond_with_tools"]

#: Tools called in the first turn, at most.
MAX_CALLS = 3
#: Capitalised words that start questions, not name things.
_QUESTION_WORDS = frozenset(
    {
        "What",
        "Which",
        "Who",
        "Whom",
        "Whose",
        "Where",
        "When",
        "Why",
        "How",
        "Is",
        "Are",
        "Was",
        "Were",
        "Do",
        "Does",
        "Did",
        "Can",
        "Could",
        "Will",
        "Would",
        "Should",
        "Please",
        "Tell",
        "Give",
        "Find",
        "Show",
        "List",
        "I",
        "The",
        "A",
        "An",
    }
)


def respond_with_tools(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], question: str
) -> tuple[dict[str, Any], str]:
    """The next assistant message and its ``finish_reason`` ("tool_calls" or "stop")."""
    asked = [m for m in messages if m.get("role") == "assistant" and m.get("tool_calls")]
    if not asked:
        calls = []
        for index, tool in enumerate(tools[:MAX_CALLS]):
            function = tool.get("function")
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                continue
            arguments = arguments_for(function.get("parameters"), question)
            calls.append(
                {
                    "id": f"call_0_{index}",
                    "type": "function",
                    "function": {"name": function["name"], "arguments": json.dumps(arguments)},
                }
            )
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    results = [
        str(m.get("content") or "")
        for m in messages
        if m.get("role") == "tool" and isinstance(m.get("content"), str)
    ]
    if not results:
        return {"role": "assistant", "content": "I have no tool to answer that."}, "stop"
    return {"role": "assistant", "content": "The tools said: " + "; ".join(results)}, "stop"


def arguments_for(schema: Any, question: str) -> Any:
    """A value that fits JSON Schema ``schema`` (see the module docstring)."""
    if not isinstance(schema, Mapping):
        return {}
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            typed = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
            return arguments_for((typed or options)[0], question)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        required = schema.get("required") or []
        if not isinstance(properties, Mapping):
            return {}
        return {
            name: arguments_for(properties.get(name), question)
            for name in required
            if isinstance(name, str)
        }
    return _scalar(kind, question)


def _scalar(kind: Any, question: str) -> Any:
    if kind == "string":
        return _phrase(question)
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    return None


def _phrase(question: str) -> str:
    quoted = re.findall(r"[\"“']([^\"”']{1,80})[\"”']", question)
    if quoted:
        return str(quoted[-1])
    words = [w for w in re.findall(r"\b[A-Z][\w-]*", question) if w not in _QUESTION_WORDS]
    return words[-1] if words else "example"
