"""End to end over loopback: the calculator agent against the mock trainer.

Each test serves the mock trainer and a rollout server with Hypercorn on 127.0.0.1:0 and
checks what the trainer received on the wire.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from conftest import Server, StartServer, Trainer, init_body, run_to_result
from rollout.testing import Fault


def assert_append_only(chat_bodies: list[dict[str, Any]], result: dict[str, Any]) -> None:
    """docs/PROTOCOL.md §7.1: each request extends the previous one plus its answer."""
    previous: list[Any] | None = None
    for body in chat_bodies:
        messages = body["messages"]
        if previous is not None:
            assert messages[: len(previous)] == previous
        previous = messages
    assert previous is not None
    assert result["final_messages"][: len(previous)] == previous


def assert_tool_pairing(messages: list[dict[str, Any]]) -> None:
    """docs/PROTOCOL.md §7.2: every tool call answered once, right after its message."""
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        ids = [call["id"] for call in message.get("tool_calls") or []]
        answered = []
        while index < len(messages) and messages[index]["role"] == "tool":
            answered.append(messages[index]["tool_call_id"])
            index += 1
        assert answered == ids


async def test_happy_path_with_reward(server: Server, trainer: Trainer) -> None:
    body = init_body(trainer, "What is 25 + 17?", metadata={"ground_truth": "42"})
    result = await run_to_result(server, trainer, body)

    assert result["status"] == "COMPLETED"
    assert result["finish_reason"] == "stop"
    assert result["reward"] == 1.0
    assert "error_message" not in result
    final = result["final_messages"]
    assert final[:2] == body["messages"]
    assert final[2]["tool_calls"][0]["function"]["name"] == "add"
    assert final[3] == {
        "role": "tool",
        "content": "42",
        "tool_call_id": final[2]["tool_calls"][0]["id"],
    }
    assert final[-1] == {"role": "assistant", "content": "The answer is 42."}
    chats = [r.body for r in trainer.mock.chat_requests_for("r-1")]
    assert len(chats) == 2
    assert_append_only(chats, result)
    assert_tool_pairing(final)
    metrics = result["metrics"]
    assert metrics["num_llm_calls"] == 2
    assert metrics["num_tool_calls"] == 1
    assert metrics["response_tokens"] > 0
    assert metrics["total_latency_ms"] >= metrics["llm_latency_ms"] > 0


async def test_multi_step_runs_one_turns_tool_calls_concurrently_in_call_order(
    server: Server, trainer: Trainer
) -> None:
    body = init_body(trainer, "Compute (2 + 3) * (4 + 5).", metadata={"ground_truth": "45"})
    result = await run_to_result(server, trainer, body)

    assert result["status"] == "COMPLETED"
    assert result["reward"] == 1.0
    final = result["final_messages"]
    first_calls = final[2]["tool_calls"]
    assert len(first_calls) == 2
    assert [m["tool_call_id"] for m in final[3:5]] == [c["id"] for c in first_calls]
    assert [m["content"] for m in final[3:5]] == ["5", "9"]
    assert_tool_pairing(final)
    assert_append_only([r.body for r in trainer.mock.chat_requests_for("r-1")], result)


async def test_tool_error_is_a_tool_message_not_a_crash(server: Server, trainer: Trainer) -> None:
    body = init_body(trainer, "What is 10 divided by 0?", metadata={"ground_truth": "7"})
    result = await run_to_result(server, trainer, body)

    assert result["status"] == "COMPLETED"
    tool_messages = [m for m in result["final_messages"] if m["role"] == "tool"]
    assert tool_messages[0]["content"] == "Error: division by zero"
    assert result["reward"] == 0.0


async def test_max_turns_ends_completed_with_exactly_max_turns_requests(
    server: Server, trainer: Trainer
) -> None:
    trainer.mock.behaviour = "always_tools"
    result = await run_to_result(server, trainer, init_body(trainer, max_turns=3))

    assert result["status"] == "COMPLETED"
    assert result["finish_reason"] == "max_turns"
    assert len(trainer.mock.chat_requests_for("r-1")) == 3
    assert result["metrics"]["num_llm_calls"] == 3
    # The last tool calls were answered: the trajectory is well formed.
    assert result["final_messages"][-1]["role"] == "tool"
    assert_tool_pairing(result["final_messages"])


async def test_max_tokens_total_stops_before_the_next_request(
    server: Server, trainer: Trainer
) -> None:
    trainer.mock.behaviour = "always_tools"
    trainer.mock.completion_tokens = 40
    result = await run_to_result(server, trainer, init_body(trainer, max_tokens_total=100))

    assert result["status"] == "COMPLETED"
    assert result["finish_reason"] == "max_tokens"
    # 40 + 40 < 100, 120 >= 100: the third answer spends the budget, no fourth request.
    assert len(trainer.mock.chat_requests_for("r-1")) == 3
    assert result["metrics"]["response_tokens"] == 120


async def test_deadline_ends_a_hung_rollout_with_its_trajectory(
    start_server: StartServer, trainer: Trainer
) -> None:
    server = await start_server(rollout_timeout=0.5)
    trainer.mock.chat_delay = 60.0
    body = init_body(trainer)
    result = await run_to_result(server, trainer, body)

    assert result["status"] == "ERROR"
    assert result["finish_reason"] == "timeout"
    assert "deadline" in result["error_message"]
    assert result["final_messages"] == body["messages"]
    assert "reward" not in result


async def test_trainer_errors_are_retried_then_the_rollout_recovers(
    server: Server, trainer: Trainer
) -> None:
    trainer.mock.chat_faults.extend([Fault(status=500), Fault(status=503, retry_after=0.01)])
    result = await run_to_result(
        server, trainer, init_body(trainer, metadata={"ground_truth": "42"})
    )

    assert result["status"] == "COMPLETED"
    assert result["reward"] == 1.0
    chats = [r.body for r in trainer.mock.chat_requests_for("r-1")]
    assert len(chats) == 4  # two failed attempts of turn 1, then turns 1 and 2
    assert chats[0] == chats[1] == chats[2]


async def test_trainer_failing_for_good_ends_in_an_error_result_with_the_trajectory(
    server: Server, trainer: Trainer
) -> None:
    trainer.mock.chat_faults.extend([Fault(status=500)] * 4)
    body = init_body(trainer)
    result = await run_to_result(server, trainer, body)

    assert result["status"] == "ERROR"
    assert result["finish_reason"] == "error"
    assert "HTTP 500" in result["error_message"]
    assert "4 attempts" in result["error_message"]
    assert result["final_messages"] == body["messages"]
    assert len(trainer.mock.chat_requests_for("r-1")) == 4


async def test_a_4xx_from_the_trainer_is_not_retried(server: Server, trainer: Trainer) -> None:
    trainer.mock.chat_faults.append(Fault(status=400, body=b'{"error": "bad request"}'))
    result = await run_to_result(server, trainer, init_body(trainer))

    assert result["status"] == "ERROR"
    assert "HTTP 400" in result["error_message"]
    assert len(trainer.mock.chat_requests_for("r-1")) == 1


async def test_a_malformed_completion_is_an_honest_error(server: Server, trainer: Trainer) -> None:
    trainer.mock.chat_faults.append(Fault(body=b"{}"))
    result = await run_to_result(server, trainer, init_body(trainer))

    assert result["status"] == "ERROR"
    assert "malformed chat completion" in result["error_message"]
    assert "choices" in result["error_message"]


async def test_result_delivery_is_retried_and_never_rewritten(
    server: Server, trainer: Trainer
) -> None:
    trainer.mock.completed_faults.extend([Fault(status=500), Fault(status=503)])
    body = init_body(trainer, metadata={"ground_truth": "42"})
    result = await run_to_result(server, trainer, body)

    assert result["status"] == "COMPLETED"
    assert result["reward"] == 1.0
    assert len(result["final_messages"]) == 5
    assert len(trainer.mock.results["r-1"]) == 1
    health = await server.health()
    assert health["lost_results"] == 0


async def test_callbacks_carry_the_trainer_api_key(server: Server, trainer: Trainer) -> None:
    await run_to_result(server, trainer, init_body(trainer, api_key="trainer-key-abc"))

    requests = [*trainer.mock.chat_requests_for("r-1"), *trainer.mock.results["r-1"]]
    assert len(requests) == 3
    assert all(r.headers.get("authorization") == "Bearer trainer-key-abc" for r in requests)


async def test_no_authorization_header_without_an_api_key(server: Server, trainer: Trainer) -> None:
    await run_to_result(server, trainer, init_body(trainer))

    requests = [*trainer.mock.chat_requests_for("r-1"), *trainer.mock.results["r-1"]]
    assert requests
    assert all("authorization" not in r.headers for r in requests)


async def test_duplicate_init_runs_once_and_reports_once(server: Server, trainer: Trainer) -> None:
    body = init_body(trainer)
    first = await server.init(body)
    second = await server.init(body)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    await trainer.mock.wait_result("r-1", timeout=30.0)

    # After the result: still the same answer, and nothing starts.
    third = await server.init(body)
    assert third.status_code == 202
    assert third.json() == first.json()
    health = await server.health()
    assert health["active_rollouts"] == 0
    assert health["completed_rollouts"] == 1
    assert len(trainer.mock.results["r-1"]) == 1
    assert len(trainer.mock.chat_requests_for("r-1")) == 2


async def test_reused_key_with_another_body_is_409(server: Server, trainer: Trainer) -> None:
    assert (await server.init(init_body(trainer))).status_code == 202

    changed = await server.init(init_body(trainer, max_turns=3))
    assert changed.status_code == 409
    assert "rollout_id" in changed.json()["detail"]
    # The reference answered 202 with the OLD rollout_id here and never ran the new one.
    keyed = await server.init(init_body(trainer, rollout_id="r-2", idempotency_key="k"))
    assert keyed.status_code == 202
    other = await server.init(init_body(trainer, rollout_id="r-3", idempotency_key="k"))
    assert other.status_code == 409
    assert "r-2" not in other.text  # a 409 never reveals another rollout's id


async def test_an_idempotency_key_makes_a_new_rollout_id_distinct(
    server: Server, trainer: Trainer
) -> None:
    a = await server.init(init_body(trainer, rollout_id="r-a", idempotency_key="k-a"))
    b = await server.init(init_body(trainer, rollout_id="r-b", idempotency_key="k-b"))
    assert (a.status_code, b.status_code) == (202, 202)
    assert (await trainer.mock.wait_result("r-a", timeout=30.0))["status"] == "COMPLETED"
    assert (await trainer.mock.wait_result("r-b", timeout=30.0))["status"] == "COMPLETED"


async def test_a_failing_rollout_does_not_harm_the_next(
    start_server: StartServer, trainer: Trainer
) -> None:
    from rollout import Agent, RolloutContext

    async def loop(ctx: RolloutContext) -> None:
        if ctx.metadata.get("explode"):
            raise RuntimeError("the agent blew up")
        await ctx.chat()

    server = await start_server(agent=Agent("fragile", loop=loop))
    bad = await run_to_result(
        server, trainer, init_body(trainer, rollout_id="bad", metadata={"explode": True})
    )
    good = await run_to_result(server, trainer, init_body(trainer, rollout_id="good"))

    assert bad["status"] == "ERROR"
    assert bad["error_message"] == "agent loop raised RuntimeError: the agent blew up"
    assert good["status"] == "COMPLETED"


async def test_a_rollout_does_not_hold_its_init_request(
    start_server: StartServer, trainer: Trainer
) -> None:
    # Trio copies the spawning task's contextvars: a rollout started in the init handler's
    # context kept that request's Quart objects alive until its result (docs/PERFORMANCE.md).
    import quart

    from rollout import Agent, RolloutContext

    seen: list[bool] = []

    async def loop(ctx: RolloutContext) -> None:
        seen.append(quart.has_request_context())
        await ctx.chat()

    server = await start_server(agent=Agent("contextless", loop=loop))
    result = await run_to_result(server, trainer, init_body(trainer))

    assert result["status"] == "COMPLETED"
    assert seen == [False]


async def test_a_failing_reward_is_an_error_not_a_zero(
    start_server: StartServer, trainer: Trainer
) -> None:
    from rollout import Agent
    from rollout.examples.calculator import agent as calculator

    def reward(_: object) -> float:
        raise KeyError("ground_truth")

    server = await start_server(agent=Agent("calc", tools=calculator.tools, reward=reward))
    result = await run_to_result(server, trainer, init_body(trainer))

    assert result["status"] == "ERROR"
    assert result["finish_reason"] == "error"
    assert "reward function failed: KeyError" in result["error_message"]
    assert "reward" not in result
    assert len(result["final_messages"]) == 5


async def test_many_concurrent_rollouts_all_report(
    start_server: StartServer, trainer: Trainer
) -> None:
    server = await start_server(max_concurrent_rollouts=4)
    count = 24

    async def one(i: int) -> None:
        body = init_body(
            trainer,
            f"What is {i} + {i}?",
            rollout_id=f"c-{i}",
            metadata={"ground_truth": str(2 * i)},
        )
        result = await run_to_result(server, trainer, body)
        assert result["reward"] == 1.0

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    assert len(trainer.mock.results) == count
    assert (await server.health())["completed_rollouts"] == count


async def test_the_api_key_never_reaches_the_logs(
    server: Server, trainer: Trainer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    trainer.mock.chat_faults.append(Fault(500))
    trainer.mock.completed_faults.append(Fault(503))
    body = init_body(trainer, rollout_id="canary", api_key="sk-log-canary-7f3a")
    await run_to_result(server, trainer, body)
    failing = init_body(trainer, rollout_id="canary-2", api_key="sk-log-canary-7f3a")
    trainer.mock.chat_faults.append(Fault(400))
    await run_to_result(server, trainer, failing)

    assert caplog.records, "the logs were captured"
    assert all("sk-log-canary-7f3a" not in record.getMessage() for record in caplog.records)
    assert "sk-log-canary-7f3a" not in caplog.text
