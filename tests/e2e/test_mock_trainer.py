"""The mock trainer over HTTP: completions shaped like examples 04/06, result recording,
the callback key, and health."""

from __future__ import annotations

import httpx
import trio

from conftest import Trainer, fixture_json
from rollout.testing import MockTrainer
from rollout.testing import serve as serve_trainer


async def test_a_chat_request_gets_a_completion_with_usage_and_token_data(trainer: Trainer) -> None:
    golden = fixture_json("04_chat_response_tool_call.json")
    body = fixture_json("03_chat_request_turn1.json")
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{trainer.url}/v1/chat/completions", json=body)

    assert response.status_code == 200
    completion = response.json()
    assert set(golden) <= set(completion)
    message = completion["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "add"
    usage = completion["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(completion["token_ids"]) == len(completion["logprobs"]) == usage["completion_tokens"]


async def test_results_are_recorded_and_readable(trainer: Trainer) -> None:
    result = fixture_json("07_completed_callback.json")
    async with httpx.AsyncClient() as client:
        assert (
            await client.get(f"{trainer.url}/v1/rollout/completed/{result['rollout_id']}")
        ).status_code == 404
        posted = await client.post(f"{trainer.url}/v1/rollout/completed", json=result)
        read = await client.get(f"{trainer.url}/v1/rollout/completed/{result['rollout_id']}")
        health = await client.get(f"{trainer.url}/health")

    assert posted.status_code == 200
    assert read.json() == result
    assert health.json() == {"status": "healthy", "chat_requests": 0, "results": 1}


async def test_the_callback_key_is_required_when_set(nursery: trio.Nursery) -> None:
    mock = MockTrainer(api_key="k")
    port = await nursery.start(serve_trainer, mock, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    result = fixture_json("07_completed_callback.json")
    async with httpx.AsyncClient() as client:
        missing = await client.post(f"{url}/v1/rollout/completed", json=result)
        wrong = await client.post(
            f"{url}/v1/rollout/completed", json=result, headers={"authorization": "Bearer x"}
        )
        right = await client.post(
            f"{url}/v1/rollout/completed", json=result, headers={"authorization": "Bearer k"}
        )

    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert len(mock.results[result["rollout_id"]]) == 1
