"""Property-based regression: any small calculator question, through the real server and
the mock trainer over loopback, ends in exactly one COMPLETED result with reward 1.0 and
a history that keeps the protocol rules (docs/PROTOCOL.md §7.1, §7.2 and §7.6)."""

from __future__ import annotations

import itertools
import operator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Server, Trainer, init_body, server_starter, serving_trainer

_ids = itertools.count()
_leaf = st.integers(0, 99).map(lambda n: (str(n), n))


def _join(inner: st.SearchStrategy[tuple[str, int]]) -> st.SearchStrategy[tuple[str, int]]:
    def join(left: tuple[str, int], op: str, right: tuple[str, int]) -> tuple[str, int]:
        value = {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](left[1], right[1])
        return f"({left[0]} {op} {right[0]})", value

    return st.builds(join, inner, st.sampled_from("+-*"), inner)


_expressions = st.recursive(_leaf, _join, max_leaves=4).filter(lambda e: "(" in e[0])


async def _run(
    server: Server, trainer: Trainer, expression: tuple[str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    text, truth = expression
    rollout_id = f"prop-{next(_ids)}"
    body = init_body(
        trainer, f"What is {text}?", rollout_id=rollout_id, metadata={"ground_truth": str(truth)}
    )
    response = await server.init(body)
    assert response.status_code == 202
    return await trainer.mock.wait_result(rollout_id, timeout=30.0), body


def _check_tool_messages(messages: list[dict[str, Any]]) -> None:
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") or []
        if message["role"] != "assistant" or not calls:
            continue
        following = messages[index + 1 : index + 1 + len(calls)]
        assert [m["role"] for m in following] == ["tool"] * len(calls)
        assert sorted(m["tool_call_id"] for m in following) == sorted(c["id"] for c in calls)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(expression=_expressions)
async def test_any_calculator_question_completes_with_full_reward(
    expression: tuple[str, int],
) -> None:
    # Each example runs in its own trio.run under pytest-trio: fresh servers, no fixtures.
    async with serving_trainer() as trainer, server_starter() as start:
        server = await start()
        result, body = await _run(server, trainer, expression)
    rollout_id = body["rollout_id"]

    assert result["status"] == "COMPLETED", result.get("error_message")
    assert result["reward"] == 1.0
    assert len(trainer.mock.results[rollout_id]) == 1
    final = result["final_messages"]
    assert final[: len(body["messages"])] == body["messages"]
    previous: list[dict[str, Any]] = []
    for request in trainer.mock.chat_requests_for(rollout_id):
        messages = request.body["messages"]
        assert messages[: len(previous)] == previous
        previous = messages
    assert final[: len(previous)] == previous
    _check_tool_messages(final)
