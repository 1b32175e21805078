"""The synchronous variant: ``POST /rollout`` runs the rollout and answers its result
inline (docs/PROTOCOL.md §6); LLM turns go to ``/v1/completions``."""

from __future__ import annotations

from typing import Any

from conftest import Server, Trainer, fixture_json
from rollout.testing import Fault


def _request(trainer: Trainer, **fields: Any) -> dict[str, Any]:
    body = {**fixture_json("09_sync_rollout_request.json"), "server_url": trainer.url}
    body.update(fields)
    return body


async def test_the_seed_example_gets_its_result_inline(server: Server, trainer: Trainer) -> None:
    body = _request(trainer, metadata={"ground_truth": "8"})
    response = await server.client.post(f"{server.url}/rollout", json=body)

    assert response.status_code == 200
    result = response.json()
    golden = fixture_json("10_sync_rollout_response.json")
    assert set(golden) <= set(result)
    assert (result["rollout_id"], result["status"], result["finish_reason"]) == (
        "test-rollout-123",
        "COMPLETED",
        "stop",
    )
    assert result["final_messages"][:2] == body["messages"]
    assert [m["role"] for m in result["final_messages"][2:]] == ["assistant", "tool", "assistant"]
    assert result["final_messages"][-1]["content"] == "The answer is 8."
    assert result["reward"] == 1.0
    requests = trainer.mock.chat_requests_for("test-rollout-123")
    assert [r.path for r in requests] == ["/v1/completions", "/v1/completions"]
    assert requests[0].body["temperature"] == 0.7
    assert requests[0].body["top_p"] == 0.9
    assert "authorization" not in requests[0].headers
    assert "test-rollout-123" not in trainer.mock.results  # no callback: the answer is the result


async def test_the_callback_api_key_authenticates_the_llm_calls(
    server: Server, trainer: Trainer
) -> None:
    body = _request(trainer, rollout_id="keyed", callback_api_key="sk-sync")
    response = await server.client.post(f"{server.url}/rollout", json=body)

    assert response.json()["status"] == "COMPLETED"
    for request in trainer.mock.chat_requests_for("keyed"):
        assert request.headers["authorization"] == "Bearer sk-sync"


async def test_trainer_failures_have_the_seed_error_prefixes(
    server: Server, trainer: Trainer
) -> None:
    trainer.mock.chat_faults.append(Fault(400))
    http_error = (
        await server.client.post(f"{server.url}/rollout", json=_request(trainer, rollout_id="h"))
    ).json()
    unreachable = (
        await server.client.post(
            f"{server.url}/rollout",
            json=_request(trainer, rollout_id="n", server_url="http://127.0.0.1:1"),
        )
    ).json()

    assert (http_error["status"], http_error["finish_reason"]) == ("ERROR", "error")
    assert http_error["error_message"].startswith("Trainer HTTP error: 400")
    assert http_error["final_messages"] == _request(trainer)["messages"]
    assert unreachable["status"] == "ERROR"
    assert unreachable["error_message"].startswith("Network error:")


async def test_seed_bounds_and_types_are_422_in_the_seed_names(
    server: Server, trainer: Trainer
) -> None:
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"sampling_params": {"temperature": 2.5}}, ["body", "sampling_params", "temperature"]),
        ({"sampling_params": {"top_p": 1.5}}, ["body", "sampling_params", "top_p"]),
        ({"sampling_params": {"max_tokens": 40000}}, ["body", "sampling_params", "max_tokens"]),
        ({"max_turns": 101}, ["body", "max_turns"]),
        ({"callback_api_key": 5}, ["body", "callback_api_key"]),
    ]
    for fields, loc in cases:
        response = await server.client.post(
            f"{server.url}/rollout", json=_request(trainer, **fields)
        )
        assert response.status_code == 422, fields
        assert [d["loc"] for d in response.json()["detail"]] == [loc]
    assert trainer.mock.chat_requests == []
