"""Tools: schemas from signatures and docstrings, argument validation, and every way a
tool call fails becoming an error tool message (docs/PROTOCOL.md §7.2)."""

from __future__ import annotations

import enum
import threading
from typing import Any, Literal

import pytest
import trio

from rollout import ToolCall, ToolError, tool
from rollout.tools import Tool, run_tool_call


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


@tool
def forecast(
    city: str,
    days: int = 3,
    unit: Unit = Unit.CELSIUS,
    hourly: bool = False,
    tags: list[str] | None = None,
    mode: Literal["fast", "exact"] = "fast",
) -> dict[str, Any]:
    """Forecast for a city.

    Longer explanation.

    Args:
        city: City name, e.g. "Paris".
        days: How many days ahead.
    """
    return {"city": city, "days": days}


def _call(name: str, arguments: str, call_id: str = "c1") -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=arguments)


async def _run(tools: list[Tool], name: str, arguments: str) -> tuple[str, bool]:
    content = await run_tool_call(_call(name, arguments), {t.name: t for t in tools})
    return content, not content.startswith("Error: ")


def test_the_schema_comes_from_the_signature_and_the_docstring() -> None:
    function = forecast.schema["function"]
    parameters = function["parameters"]

    assert forecast.schema["type"] == "function"
    assert function["name"] == "forecast"
    assert function["description"] == "Forecast for a city.\n\nLonger explanation."
    assert parameters["required"] == ["city"]
    assert parameters["additionalProperties"] is False
    assert parameters["properties"]["city"] == {
        "type": "string",
        "description": 'City name, e.g. "Paris".',
    }
    assert parameters["properties"]["days"] == {
        "type": "integer",
        "description": "How many days ahead.",
        "default": 3,
    }
    assert parameters["properties"]["unit"] == {"enum": ["celsius", "fahrenheit"]}
    assert parameters["properties"]["hourly"] == {"type": "boolean", "default": False}
    assert parameters["properties"]["tags"] == {
        "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
        "default": None,
    }
    assert parameters["properties"]["mode"] == {"enum": ["fast", "exact"], "default": "fast"}


def test_name_and_description_can_be_given() -> None:
    @tool(name="lookup", description="Look it up.")
    def f(q: str) -> str:
        return q

    assert (f.name, f.description) == ("lookup", "Look it up.")


@pytest.mark.parametrize("bad", [lambda *args: None, lambda **kwargs: None])
def test_variadic_parameters_are_refused_at_definition(bad: Any) -> None:
    with pytest.raises(TypeError, match="args"):
        tool(bad)


def test_an_unsupported_annotation_is_refused_at_definition() -> None:
    def f(x: complex) -> None: ...

    with pytest.raises(TypeError, match="cannot describe"):
        tool(f)


async def test_valid_arguments_reach_the_function() -> None:
    content, ok = await _run([forecast], "forecast", '{"city": "Paris", "days": 2}')
    assert ok
    assert content == '{"city": "Paris", "days": 2}'


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"days": 2}', "'city' is a required property"),
        ('{"city": "Paris", "days": "2"}', "'2' is not of type 'integer'"),
        ('{"city": "Paris", "days": true}', "True is not of type 'integer'"),
        ('{"city": "Paris", "unit": "kelvin"}', "'kelvin' is not one of"),
        ('{"city": "Paris", "extra": 1}', "Additional properties are not allowed"),
        ('{"city": ', "arguments are not valid JSON"),
        ("[1, 2]", "arguments must be a JSON object"),
    ],
)
async def test_bad_arguments_become_an_error_tool_message(arguments: str, expected: str) -> None:
    content, ok = await _run([forecast], "forecast", arguments)
    assert not ok
    assert content.startswith("Error: ")
    assert expected in content


async def test_empty_arguments_mean_no_arguments() -> None:
    @tool
    def now() -> str:
        return "noon"

    assert await _run([now], "now", "") == ("noon", True)


async def test_an_unknown_tool_names_the_available_ones() -> None:
    content, ok = await _run([forecast], "weather", "{}")
    assert not ok
    assert content == "Error: unknown tool 'weather'; available tools: forecast"


async def test_a_raising_tool_becomes_an_error_message() -> None:
    @tool
    def refuses(x: int) -> int:
        raise ToolError("x must be even")

    @tool
    def crashes(x: int) -> int:
        return 1 // x

    @tool
    def silent(x: int) -> int:
        raise RuntimeError

    assert await _run([refuses], "refuses", '{"x": 1}') == ("Error: x must be even", False)
    assert await _run([crashes], "crashes", '{"x": 0}') == (
        "Error: integer division or modulo by zero",
        False,
    )
    assert await _run([silent], "silent", '{"x": 0}') == ("Error: RuntimeError", False)


async def test_sync_tools_run_in_a_worker_thread_and_async_tools_on_the_loop() -> None:
    seen: dict[str, int] = {}

    @tool
    def blocking() -> str:
        seen["sync"] = threading.get_ident()
        return "ok"

    @tool
    async def cooperative() -> str:
        seen["async"] = threading.get_ident()
        await trio.lowlevel.checkpoint()
        return "ok"

    await _run([blocking], "blocking", "{}")
    await _run([cooperative], "cooperative", "{}")
    assert seen["async"] == threading.get_ident()
    assert seen["sync"] != threading.get_ident()


async def test_results_that_are_not_strings_are_sent_as_json() -> None:
    @tool
    def numbers() -> list[float]:
        return [1.5, 2]

    @tool
    def unicode() -> dict[str, str]:
        return {"city": "Zürich"}

    assert await _run([numbers], "numbers", "{}") == ("[1.5, 2]", True)
    assert await _run([unicode], "unicode", "{}") == ('{"city": "Zürich"}', True)
