"""The mock trainer's scripted model: tool calls for calculator questions, then the answer.
Pure logic, driven here by a tool loop simulated in Python."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.testing import respond

_OPS: dict[str, Callable[[float, float], float]] = {
    "add": operator.add,
    "subtract": operator.sub,
    "multiply": operator.mul,
    "divide": operator.truediv,
}


def solve(
    question: str, max_turns: int = 20
) -> tuple[str, int, list[list[tuple[str, dict[str, Any]]]]]:
    """Run the model with a Python tool executor; returns (answer, turns, calls per turn)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    made: list[list[tuple[str, dict[str, Any]]]] = []
    for turn in range(1, max_turns + 1):
        reply = respond(messages, None)
        messages.append(reply.message)
        calls = reply.message.get("tool_calls")
        if not calls:
            return reply.message["content"], turn, made
        made.append(
            [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
        )
        for call in calls:
            arguments = json.loads(call["function"]["arguments"])
            try:
                value = json.dumps(
                    float(_OPS[call["function"]["name"]](arguments["a"], arguments["b"]))
                )
            except ZeroDivisionError:
                value = "Error: division by zero"
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": value})
    raise AssertionError(f"no answer within {max_turns} turns")


@pytest.mark.parametrize(
    ("question", "first_calls", "answer"),
    [
        ("What is 25 + 17?", [("add", {"a": 25, "b": 17})], "The answer is 42."),
        ("Please calculate 5 plus 3.", [("add", {"a": 5, "b": 3})], "The answer is 8."),
        ("(12 + 30) * 2", [("add", {"a": 12, "b": 30})], "The answer is 84."),
        ("What is 7 times 6?", [("multiply", {"a": 7, "b": 6})], "The answer is 42."),
        ("What is 9 divided by 4?", [("divide", {"a": 9, "b": 4})], "The answer is 2.25."),
    ],
)
def test_calculator_questions_are_solved_with_tools(
    question: str, first_calls: list[tuple[str, dict[str, Any]]], answer: str
) -> None:
    final, _, made = solve(question)
    assert made[0] == first_calls
    assert final == answer


def test_independent_operations_are_called_in_one_turn() -> None:
    final, turns, made = solve("(2 + 3) * (4 + 5)")
    assert made == [
        [("add", {"a": 2, "b": 3}), ("add", {"a": 4, "b": 5})],
        [("multiply", {"a": 5.0, "b": 9.0})],
    ]
    assert (final, turns) == ("The answer is 45.", 3)


def test_a_tool_error_ends_with_an_honest_answer() -> None:
    final, _, _ = solve("What is 1 / 0?")
    assert final == "I could not compute that: Error: division by zero"


def test_anything_else_is_answered_without_tools() -> None:
    reply = respond([{"role": "user", "content": "Tell me a joke."}], None)
    assert "tool_calls" not in reply.message
    assert reply.finish_reason == "stop"


def test_without_the_needed_tool_the_model_answers_directly() -> None:
    only_add = [{"type": "function", "function": {"name": "add"}}]
    reply = respond([{"role": "user", "content": "What is 6 * 7?"}], only_add)
    assert reply.message["content"] == "The answer is 42."


_leaf = st.integers(0, 50).map(lambda n: (str(n), float(n)))


def _combine(inner: st.SearchStrategy[tuple[str, float]]) -> st.SearchStrategy[tuple[str, float]]:
    def join(left: tuple[str, float], op: str, right: tuple[str, float]) -> tuple[str, float]:
        value = {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](left[1], right[1])
        return f"({left[0]} {op} {right[0]})", value

    return st.builds(join, inner, st.sampled_from("+-*"), inner)


@given(st.recursive(_leaf, _combine, max_leaves=5))
def test_any_small_expression_is_solved_within_one_turn_per_operation(
    expression: tuple[str, float],
) -> None:
    text, truth = expression
    operations = text.count("+") + text.count("-") + text.count("*")
    final, turns, _ = solve(f"What is {text}?")

    assert turns <= operations + 1
    assert (
        final == f"The answer is {truth:g}."
        or float(final.removeprefix("The answer is ").rstrip(".")) == truth
    )
