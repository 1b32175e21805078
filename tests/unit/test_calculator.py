"""The calculator agent: its tools, and the reward against metadata.ground_truth."""

from __future__ import annotations

import pytest

from rollout import FinishReason, Message, ToolCall, Trajectory
from rollout.examples.calculator import agent, extract_number, reward
from rollout.tools import run_tool_call


def _trajectory(answer: str | None, ground_truth: object = "42") -> Trajectory:
    messages = [Message.user("What is 40 + 2?")]
    if answer is not None:
        messages.append(Message("assistant", answer))
    metadata = {} if ground_truth is None else {"ground_truth": ground_truth}
    return Trajectory("r", tuple(messages), metadata, FinishReason.STOP)


async def _call(name: str, a: float, b: float) -> tuple[str, bool]:
    call = ToolCall(id="c", name=name, arguments=f'{{"a": {a}, "b": {b}}}')
    content = await run_tool_call(call, {t.name: t for t in agent.tools})
    return content, not content.startswith("Error: ")


def test_the_agent_advertises_four_tools() -> None:
    assert [t.name for t in agent.tools] == ["add", "subtract", "multiply", "divide"]
    for schema in agent.tool_schemas:
        assert schema["function"]["parameters"]["required"] == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "a", "b", "expected"),
    [
        ("add", 25, 17, "42"),
        ("subtract", 5, 8, "-3"),
        ("multiply", 2.5, 4, "10.0"),
        ("divide", 1, 4, "0.25"),
    ],
)
async def test_the_tools_compute(name: str, a: float, b: float, expected: str) -> None:
    assert await _call(name, a, b) == (expected, True)


async def test_dividing_by_zero_is_a_tool_error_not_a_crash() -> None:
    assert await _call("divide", 1, 0) == ("Error: division by zero", False)


@pytest.mark.parametrize(
    ("answer", "ground_truth", "expected"),
    [
        ("The answer is 42.", "42", 1.0),
        ("The answer is 42.0.", "42", 1.0),
        ("42", 42, 1.0),
        ("The answer is 1,234.5.", "1234.5", 1.0),
        ("It is 0.30000000000000004", "0.3", 1.0),
        ("The answer is -7.", "-7", 1.0),
        ("The answer is 41.", "42", 0.0),
        ("I do not know.", "42", 0.0),
        (None, "42", 0.0),
        ("The answer is 42.", None, 0.0),
        ("The answer is 42.", "forty-two", 0.0),
    ],
)
def test_the_reward_compares_the_last_number(
    answer: str | None, ground_truth: object, expected: float
) -> None:
    assert reward(_trajectory(answer, ground_truth)) == expected


def test_extract_number_takes_the_last_one() -> None:
    assert extract_number("3 + 4 is 7") == 7.0
    assert extract_number("1e3 then .5") == 0.5
    assert extract_number("none") is None
