"""The trainer simulator drives any agent: it calls the tools the agent advertised with
arguments built from their JSON Schemas, then answers quoting the results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollout import tool
from rollout.testing import respond
from rollout.testing._generic import arguments_for


@tool
def lookup(city: str, unit: str = "celsius", days: int = 1) -> str:
    """Current temperature of a city.

    Args:
        city: City name.
        unit: celsius or fahrenheit.
        days: how many days.
    """
    return city


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is the temperature in Paris?", "Paris"),
        ('Look up "New York" please', "New York"),
        ("how cold is it?", "example"),
        ("What about Oslo and Bergen?", "Bergen"),
    ],
)
def test_string_arguments_come_from_the_question(question: str, expected: str) -> None:
    assert arguments_for(lookup.parameters, question) == {"city": expected}


def test_arguments_fit_the_schema_for_every_kind() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "flag": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "mode": {"enum": ["fast", "slow"]},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "nested": {
                "type": "object",
                "properties": {"k": {"type": "integer"}},
                "required": ["k"],
            },
            "optional": {"type": "string"},
        },
        "required": ["n", "x", "flag", "tags", "mode", "maybe", "nested"],
    }
    assert arguments_for(schema, "Q") == {
        "n": 1,
        "x": 1,
        "flag": True,
        "tags": [],
        "mode": "fast",
        "maybe": "Q",  # the question's last capitalised word
        "nested": {"k": 1},
    }


def test_it_calls_the_advertised_tools_then_quotes_their_results() -> None:
    tools = [lookup.schema]
    history: list[dict[str, Any]] = [{"role": "user", "content": "Temperature in Paris?"}]
    first = respond(history, tools)
    assert first.finish_reason == "tool_calls"
    (call,) = first.message["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    lookup.validate(json.loads(call["function"]["arguments"]))  # raises if they do not fit

    history += [first.message, {"role": "tool", "tool_call_id": call["id"], "content": "18 C"}]
    final = respond(history, tools)
    assert (final.finish_reason, final.message["content"]) == ("stop", "The tools said: 18 C")


def test_the_calculator_behaviour_stays_for_the_calculator_tools() -> None:
    reply = respond([{"role": "user", "content": "What is 2 + 3?"}], None)
    assert reply.message["tool_calls"][0]["function"]["name"] == "add"
