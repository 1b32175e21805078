"""The HTTP surface: golden fixtures, auth, every 4xx, backpressure and health."""

from __future__ import annotations

from typing import Any

import trio

from conftest import (
    Server,
    StartServer,
    Trainer,
    fixture_json,
    gated_agent,
    init_body,
    run_to_result,
)


async def test_the_captured_reference_exchange_works_unchanged(
    server: Server, trainer: Trainer
) -> None:
    """A trainer built for the reference sends 01 and expects 02, 03/05 and 07 in that shape."""
    init = fixture_json("01_init_request.json")
    init["server_url"] = trainer.url
    response = await server.init(init)

    assert response.status_code == 202
    expected_202 = fixture_json("02_init_response_202.json")
    body = response.json()
    assert body.keys() == expected_202.keys()
    assert body["rollout_id"] == "ok-1"
    assert [t["function"]["name"] for t in body["tools"]] == [
        "add",
        "subtract",
        "multiply",
        "divide",
    ]
    for tool in body["tools"]:
        assert tool.keys() == expected_202["tools"][0].keys()
        assert tool["function"].keys() == expected_202["tools"][0]["function"].keys()
        assert tool["function"]["parameters"]["required"] == ["a", "b"]

    result = await trainer.mock.wait_result("ok-1", timeout=30.0)
    chats = trainer.mock.chat_requests_for("ok-1")
    assert len(chats) == 2
    for recorded, golden_name in zip(
        chats, ["03_chat_request_turn1.json", "05_chat_request_turn2.json"], strict=True
    ):
        golden = fixture_json(golden_name)
        # Our one addition: the tools list (docs/PROTOCOL.md §4.1).
        assert recorded.body.keys() == golden.keys() | {"tools"}
        for key in ("model", "rollout_id", "temperature", "top_p", "max_tokens", "logprobs"):
            assert recorded.body[key] == golden[key], key
        assert recorded.headers["authorization"] == "Bearer trainer-key-abc"
    assert chats[0].body["messages"] == fixture_json("03_chat_request_turn1.json")["messages"]
    turn2 = chats[1].body["messages"]
    golden_turn2 = fixture_json("05_chat_request_turn2.json")["messages"]
    assert [m.keys() for m in turn2] == [m.keys() for m in golden_turn2]
    assert turn2[3]["content"] == "5"

    golden_result = fixture_json("07_completed_callback.json")
    assert list(result) == list(golden_result)
    assert result["metrics"].keys() == golden_result["metrics"].keys()
    assert result["status"] == "COMPLETED"
    assert result["reward"] == 1.0
    assert result["final_messages"][-1]["content"] == "The answer is 5."


async def test_an_empty_body_gets_the_reference_422_shape(server: Server) -> None:
    response = await server.init({})

    assert response.status_code == 422
    detail = response.json()["detail"]
    golden = fixture_json("08_init_invalid_422.json")["detail"]
    assert [d["loc"] for d in detail] == [
        d["loc"] for d in golden if d["loc"][1] != "completion_params"
    ]
    assert all(d["type"] == "missing" and d["msg"] == "Field required" for d in detail)


async def test_type_mismatches_are_422_with_the_location(server: Server, trainer: Trainer) -> None:
    response = await server.init(init_body(trainer, max_turns="3", api_key="sk-secret-value"))

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "int_type",
            "loc": ["body", "max_turns"],
            "msg": "expected an integer, got a string",
        }
    ]
    assert "sk-secret-value" not in response.text


async def test_invalid_inputs_are_4xx_and_start_nothing(server: Server, trainer: Trainer) -> None:
    cases: list[tuple[dict[str, Any], bytes | None, int]] = [
        ({"content-type": "application/json"}, b"{not json", 422),
        ({"content-type": "application/json"}, b"[1, 2]", 422),
        ({"content-type": "application/json"}, b'"text"', 422),
        ({"content-type": "application/json"}, b"\xff\xfe", 422),
        ({"content-type": "text/plain"}, b"{}", 415),
    ]
    for headers, content, status in cases:
        response = await server.client.post(
            f"{server.url}/v1/rollout/init", content=content, headers=headers
        )
        assert response.status_code == status, (content, response.text)
        assert "detail" in response.json()
    for bad in (
        init_body(trainer, max_turns=-1),
        init_body(trainer, messages=[]),
        init_body(trainer, server_url="not a url"),
        init_body(trainer, rollout_id="   "),
        init_body(trainer, completion_params={"stream": True}),
    ):
        response = await server.init(bad)
        assert response.status_code == 422, response.text
    health = await server.health()
    assert health["active_rollouts"] == health["completed_rollouts"] == 0
    assert trainer.mock.chat_requests == []


async def test_a_body_over_the_limit_is_413(start_server: StartServer, trainer: Trainer) -> None:
    server = await start_server(max_body_bytes=10_000)
    response = await server.init(init_body(trainer, metadata={"blob": "x" * 20_000}))

    assert response.status_code == 413
    assert "detail" in response.json()


async def test_unknown_routes_and_methods_answer_json(server: Server) -> None:
    missing = await server.client.get(f"{server.url}/v1/nope")
    wrong_method = await server.client.get(f"{server.url}/v1/rollout/init")

    assert missing.status_code == 404
    assert wrong_method.status_code == 405
    assert "detail" in missing.json()
    assert "detail" in wrong_method.json()


async def test_inbound_api_key_is_checked_before_the_body(
    start_server: StartServer, trainer: Trainer
) -> None:
    server = await start_server(api_key="s3cret")
    url = f"{server.url}/v1/rollout/init"
    for headers in (
        {},
        {"authorization": "s3cret"},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic s3cret"},
    ):
        response = await server.client.post(url, content=b"{not even json", headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid or missing API key"}
    accepted = await server.init(init_body(trainer), headers={"authorization": "Bearer s3cret"})
    assert accepted.status_code == 202
    # Health stays open for load balancers.
    assert (await server.health())["status"] == "healthy"


async def test_health_has_the_reference_keys_and_ours(server: Server) -> None:
    health = await server.health()

    assert health["status"] == "healthy"
    assert health["agent_loop"] == "calculator"
    for key in (
        "active_rollouts",
        "completed_rollouts",
        "queued_rollouts",
        "running_rollouts",
        "draining",
    ):
        assert key in health


async def test_admission_is_bounded_with_429_and_retry_after(
    start_server: StartServer, trainer: Trainer
) -> None:
    release = trio.Event()
    server = await start_server(
        agent=gated_agent(release), max_concurrent_rollouts=1, max_queued_rollouts=1
    )
    running = await server.init(init_body(trainer, rollout_id="a"))
    queued = await server.init(init_body(trainer, rollout_id="b"))
    refused = await server.init(init_body(trainer, rollout_id="c"))

    assert (running.status_code, queued.status_code, refused.status_code) == (202, 202, 429)
    assert float(refused.headers["retry-after"]) > 0
    health = await server.health()
    assert (health["running_rollouts"], health["queued_rollouts"]) == (1, 1)
    # A duplicate of an admitted rollout is still answered while the queue is full.
    assert (await server.init(init_body(trainer, rollout_id="a"))).status_code == 202

    release.set()
    for rollout_id in ("a", "b"):
        assert (await trainer.mock.wait_result(rollout_id, timeout=30.0))["status"] == "COMPLETED"
    assert "c" not in trainer.mock.results
    assert (await run_to_result(server, trainer, init_body(trainer, rollout_id="c")))[
        "status"
    ] == "COMPLETED"
